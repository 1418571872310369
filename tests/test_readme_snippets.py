"""
README.rst's code blocks stay true: each literal block is found by its
first line and either run (as written, but for a free port instead of
8443/9443, a scratch ``HOME`` and the test virtualenv's ``.venv/bin``) or,
where it needs the outside world (a browser's certificate store, a second
virtualenv), checked against what it refers to.  A block this file does
not know fails the test, so a new snippet gets a check with it.  A few
examples that are not blocks are checked too: the channels requests
(definition-list terms) and the cluster calls of the embedding section.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import runpy
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docutils.core
import docutils.nodes
import pytest

from securews.service.dev import default_state_dir, ensure_certificate
from tests.support.paths import EXAMPLES, REPO
from tests.support.processes import TWISTD, Server, clean_env, free_port
from tests.support.unprivileged import unprivileged

README = REPO / "README.rst"
BIN = Path(sys.executable).parent


def blocks() -> list[str]:
    tree = docutils.core.publish_doctree(README.read_text("utf-8"))
    return [node.astext() for node in tree.findall(docutils.nodes.literal_block)]


def block(first_line: str) -> str:
    found = [b for b in blocks() if b.startswith(first_line)]
    assert len(found) == 1, f"README has {len(found)} blocks starting {first_line!r}"
    return found[0]


def shell(text: str, *, home: Path, port: int | None = None, old: str = "8443",
          stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run README shell text with the test venv, ``HOME`` and a port swapped."""
    text = re.sub(r"(?<![\w/])\.venv/bin/", f"{BIN}/", text)
    if port is not None:
        text = text.replace(f":{old}", f":{port}").replace(f" {old}", f" {port}")
    env = {**clean_env(), "HOME": str(home)}
    env.pop("XDG_STATE_HOME", None)
    return subprocess.run(["bash", "-c", text], cwd=REPO, env=env, input=stdin,
                          text=True, capture_output=True, timeout=timeout,
                          check=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A scratch HOME, whose default state folder holds the dev certificate."""
    return tmp_path / "home"


@pytest.fixture
def dev_server(home: Path, tmp_path: Path) -> Iterator[int]:
    """``twistd -n securews --dev`` with HOME=home, on a free port."""
    port = free_port()
    env_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        server = Server(["--dev", "--listen", f"tcp:{port}:interface=127.0.0.1"],
                        tmp_path)
    finally:
        if env_home is None:
            os.environ.pop("HOME")
        else:
            os.environ["HOME"] = env_home
    try:
        # The development-mode warning, logged after the listening line
        # and the banner, names the certificate under this HOME.
        server.wait_for(str(home / ".local/state/securews/dev-cert.pem"))
        DEV_SERVERS[port] = server
        yield port
    finally:
        DEV_SERVERS.pop(port, None)
        server.stop()


#: The running dev servers by port: a failing client test shows the log.
DEV_SERVERS: dict[int, Server] = {}


def server_log(port: int) -> str:
    server = DEV_SERVERS.get(port)
    return f"\n--- server log ---\n{server.text()}" if server is not None else ""


# -- the blocks, by first line ---------------------------------------------------

KNOWN: dict[str, str] = {
    "python3 -m venv .venv && .venv/bin/pip install . &&":
        "run by tests/test_browser.py",
    "certutil -d sql:$HOME/.pki/nssdb": "test_certutil_imports_the_dev_certificate",
    ".venv/bin/securews client wss://127.0.0.1:8443/ws": "test_terminal_client",
    "import os\nimport ssl": "test_python_client",
    "python3 -m venv .venv && .venv/bin/pip install '.[test]'": "test_test_command",
    "securews init /etc/securews": "test_first_production_setup",
    "securews: error: /etc/securews/securews.toml: server.max_conections":
        "test_unknown_key_error",
    "securews: error: /etc/securews/securews.toml: server.listen":
        "test_listen_error",
    "securews: error: --config FILE is required": "test_usage_error",
    "const r = await fetch(": "test_ticket_snippet",
    "import hmac": "test_embedding_snippet_is_the_example",
    "SECUREWS_TOKEN=s3cret .venv/bin/python examples/embed.py":
        "test_running_the_example",
    "from securews.auth import Principal": "test_testing_snippet",
    ".venv/bin/python -m pytest tests/conformance": "test_conformance_commands",
    ".venv/bin/python -m tests.conformance --full": "test_conformance_commands",
    "affinity read back at the end:": "benchmark output, not a command",
    "class Notifier(securews.SecureServerProtocol):": "test_notifier_snippet",
    'curl -H "Authorization: Bearer $(cat /etc/securews/admin-token)"':
        "test_revoking_with_curl",
    "kind             handshakes/s": "test_cluster_benchmark_table "
        "(benchmark output, not a command)",
    "kind            publisher      offered": "test_channels_benchmark_table "
        "(benchmark output, not a command)",
}


def test_every_block_is_known() -> None:
    """A new code block in README needs an entry here (and a check)."""
    unknown = [b.splitlines()[0] for b in blocks()
               if not any(b.startswith(first) for first in KNOWN)]
    assert unknown == []
    gone = [first for first in KNOWN if not any(b.startswith(first) for b in blocks())]
    assert gone == []


def test_certutil_imports_the_dev_certificate() -> None:
    """The certificate path is where --dev keeps it by default."""
    words = shlex.split(block("certutil"))
    assert words[-1] == "~/.local/state/securews/dev-cert.pem"
    assert words[words.index("-t") + 1] == "P,,"  # a trusted peer (server) cert
    saved = {k: os.environ.pop(k, None) for k in ("XDG_STATE_HOME", "HOME")}
    os.environ["HOME"] = "/home/someone"
    try:
        assert default_state_dir() == Path("/home/someone/.local/state/securews")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_terminal_client(home: Path, dev_server: int) -> None:
    result = shell(block(".venv/bin/securews client"), home=home, port=dev_server,
                   stdin="hello\n")
    assert (result.returncode, result.stdout) == (0, "hello\n"), (
        result.stderr + server_log(dev_server))


def test_python_client(home: Path, dev_server: int, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(block("import os\nimport ssl").replace(":8443", f":{dev_server}"))
    env = {**clean_env(), "HOME": str(home)}
    env.pop("XDG_STATE_HOME", None)
    result = subprocess.run([sys.executable, str(script)], env=env, text=True,
                            capture_output=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (0, "hello\n"), (
        result.stderr + server_log(dev_server))


def test_test_command() -> None:
    """The test command is the one .ci/run runs, with the test extras."""
    words = shlex.split(block(
        "python3 -m venv .venv && .venv/bin/pip install '.[test]'"))
    assert words[-3:] == [".venv/bin/python", "-m", "pytest"]
    assert ".[test]" in words
    assert ".venv/bin/python -m pytest" in (REPO / ".ci/run").read_text()


def test_first_production_setup(tmp_path: Path) -> None:
    """init, then check: the only problems are the certificate's two files
    (and, where port 443 cannot be bound here, the address)."""
    text = block("securews init /etc/securews").replace("/etc/securews",
                                                        str(tmp_path / "etc"))
    init, check, run = text.splitlines()
    assert shell(f"{BIN}/{init}", home=tmp_path).returncode == 0
    result = shell(f"{BIN}/{check}", home=tmp_path)
    assert result.returncode == 2
    keys = [line.split(": ")[3] for line in result.stderr.splitlines()]
    assert keys[:2] == ["tls.cert", "tls.key"]
    assert set(keys[2:]) <= {"server.listen"}
    assert run.startswith("twistd -n securews --config ")
    started = shell(f"{BIN}/{run}", home=tmp_path)
    assert started.returncode == 2
    assert started.stderr.splitlines()[:2] == result.stderr.splitlines()[:2]


def test_unknown_key_error(tmp_path: Path) -> None:
    expected = block("securews: error: /etc/securews/securews.toml: server.max_con")
    path = tmp_path / "securews.toml"
    path.write_text("[server]\nmax_conections = 5\n")
    result = shell(f"{TWISTD} -n --pidfile= securews --config {path}", home=tmp_path)
    assert result.returncode == 2
    prefix = expected.split("(known keys:")[0].replace(
        "/etc/securews/securews.toml", str(path))
    assert result.stderr.startswith(prefix + "(known keys: ")


def test_listen_error(tmp_path: Path) -> None:
    """As written: an unprivileged user, port 443 on every IPv6 address."""
    expected = block("securews: error: /etc/securews/securews.toml: server.listen")
    with unprivileged() as user:
        from securews.service.dev import LOOPBACK_NAMES, self_signed

        cert, key = self_signed(LOOPBACK_NAMES, common_name="t",
                                now=datetime.datetime.now(datetime.UTC),
                                validity=datetime.timedelta(days=1))
        for name, data in (("cert.pem", cert), ("key.pem", key)):
            (user.home / name).write_bytes(data)
            if os.getuid() == 0:
                os.chown(user.home / name, 65534, 65534)
        path = user.home / "securews.toml"
        path.write_text('[server]\nlisten = "tcp6:443:interface=\\\\:\\\\:"\n'
                        f'[tls]\ncert = "{user.home}/cert.pem"\n'
                        f'key = "{user.home}/key.pem"\n[auth]\nmethods = []\n')
        result = user.run(TWISTD, "-n", "--pidfile=", "securews", "--config",
                          str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == expected.replace("/etc/securews/securews.toml",
                                                     str(path))


def test_usage_error(tmp_path: Path) -> None:
    result = shell(f"{TWISTD} -n --pidfile= securews", home=tmp_path)
    assert (result.returncode, result.stderr.strip()) == (
        2, block("securews: error: --config FILE is required"))


def test_ticket_snippet() -> None:
    """The page's calls match the defaults: POST /tickets, then ?ticket= on /ws."""
    text = block("const r = await fetch(")
    assert '"https://ws.example.com/tickets"' in text
    assert 'method: "POST", credentials: "include"' in text
    assert "wss://ws.example.com/ws?ticket=${ticket}" in text


def test_embedding_snippet_is_the_example() -> None:
    """README's embedding code is examples/embed.py from its imports on."""
    source = (EXAMPLES / "embed.py").read_text("utf-8")
    assert block("import hmac").strip() == source[source.index("\nimport hmac\n"):
                                                  ].strip()


def _wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            assert process.poll() is None, process.stderr
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_running_the_example(tmp_path: Path) -> None:
    """The two commands as written: the example greets through the client."""
    home = tmp_path / "home"
    ensure_certificate(home / ".local/state/securews",
                       now=datetime.datetime.now(datetime.UTC))
    serve, talk = block("SECUREWS_TOKEN=s3cret .venv/bin/python").splitlines()
    port = free_port()
    serve = serve.replace(".venv/bin/python", sys.executable).replace(
        " 9443", f" {port}")
    env = {**clean_env(), "HOME": str(home)}
    process = subprocess.Popen(["bash", "-c", serve], cwd=REPO, env=env,
                               text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(port, process)
        result = shell(talk, home=home, port=port, old="9443", stdin="shout\n")
        assert (result.returncode, result.stdout) == (0, "hello service\nSHOUT\n"), \
            result.stderr
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    usage = subprocess.run([sys.executable, str(EXAMPLES / "embed.py")],
                           env=clean_env(), text=True, capture_output=True,
                           check=False)
    assert usage.returncode == 2
    assert usage.stderr == "usage: SECUREWS_TOKEN=... python embed.py CERT KEY PORT\n"


def test_testing_snippet() -> None:
    """The test, with the embedding example's Greeter, passes."""
    namespace = runpy.run_path(str(EXAMPLES / "embed.py"), run_name="readme")
    exec(block("from securews.auth import Principal"), namespace)
    test: Callable[[], None] = namespace["test_greeter"]
    test()


def test_conformance_commands() -> None:
    """The paths exist, and --full is an option of the runner."""
    assert (REPO / "tests/conformance/test_autobahn.py").exists()
    runner = (REPO / "tests/conformance/__main__.py").read_text()
    assert re.search(r"[\"']--full[\"']", runner)


def test_notifier_snippet() -> None:
    """The class as written joins its user's channel: a message published
    there reaches the session; the claim names the channel as README says."""
    import securews
    from securews.auth import Principal
    from securews.testing import MemorySession

    namespace: dict[str, object] = {"securews": securews}
    exec(block("class Notifier(securews.SecureServerProtocol):"), namespace)
    claims = {"channels": {"sub": ["user:{sub}"]}}
    session = MemorySession.open(namespace["Notifier"],  # type: ignore[arg-type]
                                 principal=Principal("alice", "test", claims))
    assert session.status == 101
    session.factory.policy.broker.publish("user:alice", '{"note": 1}')
    session.factory.policy.broker.publish("user:bob", '{"note": 2}')
    (frame,) = [json.loads(m) for m in session.received()]
    assert (frame["channel"], frame["data"]) == ("user:alice", {"note": 1})


def test_channels_protocol_requests_parse_as_written() -> None:
    """The requests in "Channels: publish and subscribe" (definition-list
    terms, not code blocks) are the ones the server's parser takes."""
    from securews.rules.channels import (
        Invalid,
        Publish,
        Subscribe,
        Unsubscribe,
        parse_request,
    )

    tree = docutils.core.publish_doctree(README.read_text("utf-8"))
    terms = [node.astext() for node in tree.findall(docutils.nodes.term)
             if node.astext().startswith('{"op": ')]
    # ANY is any JSON value, E an epoch the server gave (a string).
    parsed = [parse_request(json.loads(re.sub(r"\bE\b", '"E"',
                                              term.replace("ANY", "null"))))
              for term in terms]
    assert [type(p) for p in parsed] == [Subscribe, Subscribe, Unsubscribe, Publish]
    assert not any(isinstance(p, Invalid) for p in parsed)


def test_cluster_from_python_names_what_exists() -> None:
    """The embedding paragraph's cluster calls (inline, no block): the
    names, their parameters, and build_service doing all of it."""
    import inspect

    from securews.policy import build_policy
    from securews.service import _service
    from securews.service.cluster import ClusterNode, cluster_node

    text = " ".join(README.read_text("utf-8").split())
    assert ("``node = securews.service.cluster.cluster_node(config, reactor)``"
            in text)
    assert list(inspect.signature(cluster_node).parameters) == ["config", "reactor"]
    assert {"shared", "serve", "startService"} <= set(dir(ClusterNode))
    assert {"shared", "ticket_store"} <= set(
        inspect.signature(build_policy).parameters)
    assert "``ticket_store=node.tickets``" in text
    assembly = inspect.getsource(_service.build_service)
    for call in ("cluster_node(config, reactor)", "ticket_store=cluster.tickets",
                 "shared=cluster.shared()", "cluster.serve(policy)"):
        assert call in assembly


def test_cluster_benchmark_table() -> None:
    """The columns README shows are the ones bench/cluster.py prints."""
    header = block("kind             handshakes/s").splitlines()[0].split("  ")
    source = (REPO / "bench/cluster.py").read_text("utf-8")
    for column in filter(None, (c.strip() for c in header)):
        assert f"'{column}'" in source, column


def test_channels_benchmark_table() -> None:
    """The columns README shows are the ones bench/channels.py prints."""
    header = block("kind            publisher").splitlines()[0]
    source = (REPO / "bench/channels.py").read_text("utf-8")
    printed = source[source.index("print(f\"{'kind'"):]
    printed = printed[:printed.index("\n        for row in rows")]
    columns = re.findall(r"\{'([^']+)':", printed)
    assert header.split() == " ".join(columns).split()


def test_revoking_with_curl(tmp_path: Path) -> None:
    """The command as written (with init's files and ports moved): on a
    server init set up, alice's token works, then curl revokes her (200,
    as README says), then it is refused 401."""
    etc = tmp_path / "etc"
    port, admin = free_port(), free_port()
    securews = f"{BIN}/securews"
    init = shell(f"{securews} init {etc} --self-signed --listen "
                 f"tcp:{port}:interface=127.0.0.1 --admin-listen "
                 f"tcp:{admin}:interface=127.0.0.1 --origin https://app.example.com",
                 home=tmp_path)
    assert init.returncode == 0, init.stderr
    config = etc / "securews.toml"
    server = Server(["--config", str(config)], tmp_path)
    try:
        server.wait_for("securews listening on")
        token = shell(f"{securews} token --config {config} --sub alice",
                      home=tmp_path).stdout.strip()
        client = (f"SECUREWS_TOKEN={token} {securews} client "
                  f"wss://127.0.0.1:{port}/ws --cafile {etc}/tls/cert.pem "
                  "--origin https://app.example.com")
        assert shell(client, home=tmp_path, stdin="hi\n").stdout == "hi\n"
        curl = block('curl -H "Authorization: Bearer').replace(
            "/etc/securews", str(etc))
        revoked = shell(curl, home=tmp_path, port=admin, old="9100")
        assert revoked.returncode == 0, revoked.stderr
        assert json.loads(revoked.stdout) == {"revoked": "principal",
                                              "closed_here": 0}
        refused = shell(client, home=tmp_path, stdin="hi\n")
        assert refused.returncode == 1
        assert "401 Unauthorized" in refused.stderr
    finally:
        server.stop()
