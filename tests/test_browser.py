"""
The first thing a new user does, in a real browser: README's first
command (``twistd -n securews --dev``), then the built-in page in a
headless Chromium, which connects, echoes and shows the result.  A
browser that rejects the self-signed certificate is the client's doing:
summarised at INFO, never an ERROR.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import docutils.core
import docutils.nodes
import pytest

from tests.support.browser import chromium, spki_hash
from tests.support.paths import REPO
from tests.support.processes import Server, free_port


def readme_first_command() -> list[str]:
    """The words of README's first literal block (the "try it" command)."""
    tree = docutils.core.publish_doctree((REPO / "README.rst").read_text("utf-8"))
    first = next(iter(tree.findall(docutils.nodes.literal_block)))
    return shlex.split(first.astext())


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[tuple[Server, int, Path]]:
    """README's command, run as written but for the port (8443 may be taken
    on a shared machine) and the certificate's folder."""
    words = readme_first_command()
    twistd = words.index(".venv/bin/twistd")
    assert words[:twistd] == ["python3", "-m", "venv", ".venv", "&&", ".venv/bin/pip",
                              "install", ".", "&&"]
    assert words[twistd + 1:] == ["-n", "securews", "--dev"]
    port = free_port()
    state = tmp_path / "state"
    server = Server(["--dev", "--state-dir", str(state), "--listen",
                     f"tcp:{port}:interface=127.0.0.1"], tmp_path)
    try:
        server.wait_for("securews listening on")
        yield server, port, state / "dev-cert.pem"
    finally:
        server.stop()


def test_the_dev_page_echoes_in_a_real_browser(
    tmp_path: Path, dev_server: tuple[Server, int, Path]
) -> None:
    """Chromium opens https://127.0.0.1:PORT/ (trusting the dev certificate,
    as a user who accepted it once) and the page shows the echo."""
    server, port, cert = dev_server
    page = f"https://127.0.0.1:{port}/"

    # A browser that does not trust the certificate: an error page for the
    # user, and for the server a client-side TLS failure, never an ERROR.
    with chromium(tmp_path / "untrusting") as browser:
        tab = browser.open(page)
        browser.wait_for(tab, "location.protocol", "chrome-error:")

    with chromium(tmp_path / "trusting",
                  f"--ignore-certificate-errors-spki-list={spki_hash(cert.read_bytes())}"
                  ) as browser:
        tab = browser.open(page)
        browser.wait_for(tab, "document.body.dataset.state", "echoed")
        shown = browser.evaluate(tab, "document.getElementById('log').textContent")
        assert shown == "sent: hello, securews\necho: hello, securews\n"
        assert browser.evaluate(tab, "document.getElementById('state').textContent"
                                ) == f"connected to wss://127.0.0.1:{port}/ws"
        # Typing into the page's form sends another message.
        browser.evaluate(tab, "document.getElementById('text').value = 'typed';"
                              "document.querySelector('button').click()")
        browser.wait_for(tab, "document.getElementById('log').textContent"
                              ".endsWith('echo: typed\\n')", True)

    log = server.text()
    assert "handshake page 200 from 127.0.0.1 path=/ " in log
    assert (f"handshake accepted 101 from 127.0.0.1 path=/ws "
            f"origin=https://127.0.0.1:{port} method=anonymous") in log
    server.wait_for("TLS handshakes failed (client-side", timeout=30)
    assert "#error]" not in server.text()
    assert "#critical]" not in server.text()
    assert "SSL error" not in server.text()
