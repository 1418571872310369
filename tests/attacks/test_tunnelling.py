"""
"Avoid tunnelling": none of Autobahn's ways of turning a WebSocket into
something else is reachable.  Its status page (which names the library
and answers ``?redirect=<url>`` with a 303 to anywhere) is never
rendered, the subprotocols of its tunnelling factory
(``WrappingWebSocketServerFactory``: ``binary`` and ``base64``, raw TCP
carried in messages) open nothing but the application, and the server
process never loads Autobahn's forwarder or web-resource code, nor
Twisted's port forwarders.
"""

from __future__ import annotations

import ast
import json
import signal
import sys
import time
from http import HTTPStatus
from pathlib import Path

from tests.support.common import CertFiles
from tests.support.paths import REPO
from tests.support.rawclient import BINARY, TEXT, frame

from .conftest import KeyFiles
from .harness import (
    Addresses,
    Sections,
    Target,
    attack,
    bearer,
    client,
    echo,
    handshake_bound,
)
from .wire import Wires

EVIL = "https://evil.example/"

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade",
           "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
#: Requests Autobahn would answer with its status page or a redirect
#: (``webStatus``), and what securews answers instead.
STATUS_PAGE_REQUESTS = [
    ("GET / HTTP/1.1", {}, 404),
    (f"GET /?redirect={EVIL} HTTP/1.1", {}, 404),
    ("GET /ws HTTP/1.1", {}, 426),
    (f"GET /ws?redirect={EVIL} HTTP/1.1", {}, 426),
    (f"GET /ws?redirect={EVIL} HTTP/1.1", UPGRADE, 401),
]

#: Modules that forward raw bytes or serve Autobahn's web resources.
#: ``autobahn.twisted.wrapping`` does not exist in Autobahn 26 (its
#: wrapping factory lives in ``autobahn.twisted.websocket``, which securews
#: needs, hence the object check below); the name is kept for older and
#: newer layouts.
TUNNEL_MODULES = (
    "autobahn.twisted.forwarder",
    "autobahn.twisted.wrapping",
    "autobahn.twisted.resource",
    "twisted.protocols.portforward",
    "twisted.tap.portforward",
    "twisted.protocols.socks",
    "twisted.tap.socks",
)
TUNNEL_NAMES = {
    "WrappingWebSocketServerFactory", "WrappingWebSocketServerProtocol",
    "WrappingWebSocketClientFactory", "WrappingWebSocketClientProtocol",
    "WrappingWebSocketAdapter", "WebSocketResource", "WSGIRootResource",
}


def status_page_probes(target: Target, source: str, wires: Wires) -> None:
    """Autobahn's status page and redirect: each a plain securews refusal."""
    for line, headers, expected in STATUS_PAGE_REQUESTS:
        lines = [line, "Host: 127.0.0.1", "Origin: https://app.example.com",
                 *(f"{name}: {value}" for name, value in headers.items())]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        response = wires(target, source).request(head)
        assert response.status == expected, line
        phrase = HTTPStatus(expected).phrase
        assert response.body == f"{expected} {phrase}\n".encode()
        assert response.header("location") is None
        assert response.header("server") is None
        assert b"autobahn" not in (response.head + response.body).lower()
        assert b"evil" not in response.head + response.body


def wrapping_subprotocol_probes(target: Target, who: Addresses,
                                wires: Wires) -> None:
    """
    The tunnelling factory's subprotocols: not selected, and what is sent
    comes back from the echo application untouched (an HTTP request is
    not forwarded anywhere, base64 text is not decoded).
    """
    with client(target, who.attacker, subprotocols=["binary", "base64"]) as ws:
        assert ws.subprotocol is None
        ws.send(b"GET / HTTP/1.0\r\n\r\n")
        assert ws.recv(timeout=5) == b"GET / HTTP/1.0\r\n\r\n"
        echo(ws, "R0VUIC8gSFRUUC8xLjANCg0K")
    for offered in ("binary", "base64"):
        wire = wires(target, who.attacker)
        response = wire.upgrade(headers={**bearer(target, who.attacker),
                                         "Sec-WebSocket-Protocol": offered})
        assert response.status == 101
        assert response.header("sec-websocket-protocol") is None
        sent = [(BINARY, b"SSH-2.0-OpenSSH_9.6\r\n"), (TEXT, b"U1NILTIuMC0=")]
        for opcode, payload in sent:
            wire.send(frame(payload, opcode))
        assert wire.wait_frames(2) == sent


def test_status_page_and_redirect_are_unreachable(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """GET / and GET /ws, with ``?redirect=``: 404/426/401, never 200 or 303."""
    with attack(tls_server, who, "status page", handshake_bound(1)) as bystander:
        status_page_probes(tls_server, who.attacker, wires)
        bystander.during()
        status_page_probes(tls_server, who.other, wires)


def test_wrapping_factory_subprotocols_open_no_tunnel(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """Offering ``binary``/``base64`` gets the echo application, no tunnel."""
    bound = handshake_bound(1)
    with attack(tls_server, who, "tunnel subprotocols", bound) as bystander:
        wrapping_subprotocol_probes(tls_server, who, wires)
        bystander.during()


# -- the code itself ----------------------------------------------------------------

#: twistd's own script plus a SIGUSR1 handler reporting what the process
#: holds: its modules, any tunnelling object, and each listening port's
#: factory chain.
PROBE = '''\
import gc
import json
import os
import signal
import sys


def report(signum, frame):
    modules = sorted(sys.modules)
    from autobahn.twisted import websocket
    from twisted.internet.tcp import Port

    wrapping = (websocket.WrappingWebSocketServerFactory,
                websocket.WrappingWebSocketServerProtocol)
    found, ports = [], []
    for thing in gc.get_objects():
        if isinstance(thing, wrapping):
            found.append(type(thing).__name__)
        elif isinstance(thing, Port):
            chain, factory = [], thing.factory
            while factory is not None:
                chain.append(type(factory).__module__ + "." + type(factory).__name__)
                factory = getattr(factory, "wrappedFactory", None)
            ports.append(chain)
    with open("report.tmp", "w") as out:
        json.dump({"modules": modules, "wrapping": found, "ports": ports,
                   "securews": sys.modules["securews"].__file__}, out)
    os.replace("report.tmp", "report.json")


signal.signal(signal.SIGUSR1, report)
from twisted.scripts.twistd import run  # noqa: E402

sys.argv[0] = "twistd"
sys.exit(run())
'''


def imports_of(path: Path) -> tuple[set[str], set[str], set[str]]:
    """The modules ``path`` imports, the names it imports or reads as
    attributes, and its short string constants."""
    modules: set[str] = set()
    names: set[str] = set()
    strings: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and " " not in node.value:
            strings.add(node.value)
    return modules, names, strings


def is_tunnel_module(name: str) -> bool:
    return any(name == m or name.startswith((m + ".", m + ":"))
               for m in TUNNEL_MODULES)


def assert_no_tunnel_imports(package: Path) -> set[str]:
    """Static check of every file of the securews package and its twistd
    plugin; returns the Autobahn modules it imports."""
    files = [*package.rglob("*.py"),
             package.parent / "twisted" / "plugins" / "securews_plugin.py"]
    autobahn: set[str] = set()
    for path in files:
        modules, names, strings = imports_of(path)
        assert not [m for m in modules | strings if is_tunnel_module(m)], path
        assert not names & TUNNEL_NAMES, (path, names & TUNNEL_NAMES)
        autobahn |= {m for m in modules if m.startswith("autobahn")}
    return autobahn


def test_tunnelling_code_is_never_loaded(
    tmp_path: Path, tls_sections: Sections, tls_files: CertFiles,
    key_files: KeyFiles, who: Addresses, wires: Wires,
) -> None:
    """
    Statically, securews (this tree and the installed copy) imports none
    of the tunnelling modules or classes.  At run time, a fresh twistd
    process serving the same settings, after the status page, redirect
    and subprotocol probes, has loaded none of those modules, holds no
    wrapping factory or protocol, and listens with securews's TLS factory
    around securews's WebSocket factory only.
    """
    source = REPO / "securews"
    assert "autobahn.twisted.websocket" in assert_no_tunnel_imports(source)

    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    target = Target(tmp_path, tls_sections, tls_files.ca_cert, key_files[0],
                    program=(sys.executable, str(probe)))
    try:
        status_page_probes(target, who.attacker, wires)
        wrapping_subprotocol_probes(target, who, wires)
        target.server.process.send_signal(signal.SIGUSR1)
        report = tmp_path / "report.json"
        deadline = time.monotonic() + 10
        while not report.exists():
            assert time.monotonic() < deadline, target.log()
            time.sleep(0.05)
        found = json.loads(report.read_text())
    finally:
        target.server.stop()
    assert "Traceback" not in target.log(), target.log()

    installed = Path(found["securews"]).parent
    assert "site-packages" in str(installed)
    assert "autobahn.twisted.websocket" in assert_no_tunnel_imports(installed)
    modules = set(found["modules"])
    assert {"autobahn.twisted.websocket", "securews.service._service",
            "twisted.scripts.twistd"} <= modules
    assert not {m for m in modules if is_tunnel_module(m)}
    assert found["wrapping"] == []
    assert sorted(found["ports"]) == [
        ["securews._twisted.SecureTLSFactory",
         "securews.wire.factory.SecureServerFactory"],
        ["securews.service.admin._QuietSite"],  # [admin] listen: metrics and health
    ]


def test_tunnel_module_check_recognises_each_module() -> None:
    """The name test used above catches each module and its submodules."""
    for module in TUNNEL_MODULES:
        assert is_tunnel_module(module)
        assert is_tunnel_module(module + ".sub")
        assert not is_tunnel_module(module + "x")
