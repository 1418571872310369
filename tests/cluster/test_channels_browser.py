"""
``examples/channels.html`` and ``examples/channels.js`` in a real headless
Chromium, against two ``twistd -n securews`` nodes (``server.app =
"channels"``) on one Redis: the page is served from its own origin over
plain HTTP, mints a ticket with ``POST /tickets`` (CORS, its JWT in
``Authorization``), connects over ``wss://``, subscribes and shows what a
backend publishes with ``POST /publish``.  Then its node goes away and
comes back: the client reconnects by itself, mints a fresh ticket,
subscribes again ``since`` where it was, and the page shows exactly the
missed messages once, in order; or, when the history no longer holds
them, "messages lost" (never a silent gap).

What the page sends is recorded by wrapping ``WebSocket.prototype.send``
before its module runs, so the test sees each request (one subscription
per connection, with ``since`` after a reconnect).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode

import attrs
import pytest
import trustme

from tests.cluster.harness import ORIGIN, Cluster, Node, running_cluster
from tests.support.browser import Browser, chromium, spki_hash
from tests.support.common import write_cert
from tests.support.paths import EXAMPLES
from tests.support.redis import running_redis

#: The deadline for what the client does by itself (reconnecting with
#: backoff on a loaded machine); only a failure waits that long.
PATIENCE = 90

HISTORY = 3
GRANTS = {"channels": {"sub": ["news", "room:*"]}}

#: Before the page's own scripts: every frame it sends, parsed.
RECORD_SENT = """
window.sent = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  window.sent.push(JSON.parse(data));
  return send.call(this, data);
};
"""


class _Examples(SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        ".html": "text/html", ".js": "text/javascript"}

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """``examples/`` over HTTP on loopback: the page's own origin."""
    handler = functools.partial(_Examples, directory=str(EXAMPLES))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA,
            page_origin: str) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("channels-browser")
    certs = write_cert(ca, directory / "tls")
    with running_redis(directory / "redis") as redis, running_cluster(
            directory, redis, certs, names=("a", "b"),
            messages={"format": "json"},
            origin={"allowed": [ORIGIN, page_origin]},
            channels={"history_size": HISTORY, "probe_interval": 0.5},
            ratelimit={"connections_per_ip": 100, "sessions_per_principal": 100,
                       "connect_rate": 100.0, "connect_burst": 100},
            server={"app": "channels", "shutdown_grace": 2}) as running:
        yield running


@attrs.define
class Page:
    browser: Browser
    tab: str

    def value(self, expression: str) -> Any:
        return self.browser.evaluate(self.tab, expression)

    def wait(self, expression: str, expected: object = True) -> None:
        self.browser.wait_for(self.tab, expression, expected, timeout=PATIENCE)

    @property
    def status(self) -> str:
        return str(self.value("document.getElementById('status').textContent"))

    def lines(self) -> list[str]:
        text = self.value("document.getElementById('log').textContent")
        return str(text).splitlines()

    def wait_for_line(self, line: str) -> None:
        self.wait("document.getElementById('log').textContent.split('\\n')"
                  f".includes({json.dumps(line)})")

    def sent(self) -> list[dict[str, Any]]:
        return list(self.value("window.sent"))


@pytest.fixture
def browser(tmp_path: Path, cluster: Cluster) -> Iterator[Browser]:
    trusted = spki_hash(cluster.certs.cert.read_bytes())
    with chromium(tmp_path / "chromium",
                  f"--ignore-certificate-errors-spki-list={trusted}") as running:
        yield running


def open_page(browser: Browser, cluster: Cluster, page_origin: str, node: Node,
              channel: str) -> Page:
    """channels.html on ``node``, as README's comment in it says."""
    settings = urlencode({
        "server": f"wss://127.0.0.1:{node.port}/ws",
        "tickets": f"https://127.0.0.1:{node.port}/tickets",
        "token": cluster.token("reader", **GRANTS), "channel": channel})
    tab = browser.open("about:blank")
    browser.command("Page.enable", session=tab)
    browser.command("Page.addScriptToEvaluateOnNewDocument",
                    {"source": RECORD_SENT}, session=tab)
    browser.command("Page.navigate",
                    {"url": f"{page_origin}/channels.html#{settings}"}, session=tab)
    page = Page(browser, tab)
    page.wait("document.getElementById('status').textContent", "subscribed")
    return page


def publish(cluster: Cluster, node: Node, channel: str, data: Any) -> int:
    status, body = cluster.admin(node, "POST", "/publish",
                                 {"channel": channel, "data": data})
    assert status == 202, body
    offset: int = json.loads(body)["offset"]
    return offset


def subscriptions(page: Page, channel: str) -> list[dict[str, Any]]:
    return [m for m in page.sent()
            if m.get("op") == "subscribe" and m.get("channel") == channel]


def stop(cluster: Cluster, node: Node, *, graceful: bool) -> None:
    """SIGTERM (sessions get 1001) or SIGKILL; the port is free again."""
    assert node.server is not None
    if graceful:
        os.kill(node.pid, signal.SIGTERM)
        node.server.process.wait(30)
    else:
        cluster.kill(node)


def down(page: Page) -> None:
    """The page noticed (it says so instead of "subscribed")."""
    page.wait("document.getElementById('status').textContent !== 'subscribed'")


def test_the_page_shows_what_a_backend_publishes(
    browser: Browser, cluster: Cluster, page_origin: str
) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    page = open_page(browser, cluster, page_origin, a, "news")
    first = publish(cluster, b, "news", {"headline": "hello"})
    page.wait_for_line(f'news #{first}: {{"headline":"hello"}}')
    second = publish(cluster, a, "news", {"n": 2})
    page.wait_for_line(f'news #{second}: {{"n":2}}')
    assert page.lines() == [f'news #{first}: {{"headline":"hello"}}',
                            f'news #{second}: {{"n":2}}']
    assert [m.get("since") for m in subscriptions(page, "news")] == [None]
    # The ticket came from a CORS request (preflight first, its JWT in
    # Authorization) and the session spent it.
    log = (a.directory / "securews.log").read_text()
    tickets = f"from 127.0.0.1 path=/tickets origin={page_origin} "
    for outcome in (f"preflight 204 {tickets}", f"ticket_issued 201 {tickets}",
                    f"accepted 101 from 127.0.0.1 path=/ws origin={page_origin} "
                    "method=ticket "):
        assert f"handshake {outcome}" in log


@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "sigkill"])
def test_back_from_a_restart_the_page_shows_exactly_what_it_missed(
    browser: Browser, cluster: Cluster, page_origin: str, graceful: bool
) -> None:
    """Node A goes away; two messages are published through B meanwhile;
    A comes back on its port.  The client reconnects by itself, mints a
    fresh ticket, subscribes once ``since`` its last message, and the page
    shows the two, once, in order, then the live ones."""
    a, b = cluster.node("a"), cluster.node("b")
    channel = f"room:restart-{'term' if graceful else 'kill'}"
    page = open_page(browser, cluster, page_origin, a, channel)
    seen = publish(cluster, b, channel, "before")
    page.wait_for_line(f'{channel} #{seen}: "before"')

    stop(cluster, a, graceful=graceful)
    down(page)
    missed = [publish(cluster, b, channel, f"missed {n}") for n in (1, 2)]
    cluster.start(a)
    cluster.wait_ready(a)
    page.wait("document.getElementById('status').textContent", "subscribed")
    after = publish(cluster, a, channel, "after")
    page.wait_for_line(f'{channel} #{after}: "after"')

    assert page.lines() == [f'{channel} #{seen}: "before"',
                            f'{channel} #{missed[0]}: "missed 1"',
                            f'{channel} #{missed[1]}: "missed 2"',
                            f'{channel} #{after}: "after"']
    joins = subscriptions(page, channel)
    assert len(joins) == 2, joins  # one per connection
    assert "since" not in joins[0]
    assert joins[1]["since"]["offset"] == seen


def test_a_reconnect_before_any_message_recovers_too(
    browser: Browser, cluster: Cluster, page_origin: str
) -> None:
    """The position the client keeps is the channel's real one from the
    start (a subscription's reply), so coming back before anything was
    published recovers what came meanwhile."""
    a, b = cluster.node("a"), cluster.node("b")
    channel = "room:quiet"
    page = open_page(browser, cluster, page_origin, a, channel)
    stop(cluster, a, graceful=False)
    down(page)
    missed = publish(cluster, b, channel, "meanwhile")
    cluster.start(a)
    cluster.wait_ready(a)
    page.wait("document.getElementById('status').textContent", "subscribed")
    page.wait_for_line(f'{channel} #{missed}: "meanwhile"')
    after = publish(cluster, b, channel, "after")
    page.wait_for_line(f'{channel} #{after}: "after"')
    assert page.lines() == [f'{channel} #{missed}: "meanwhile"',
                            f'{channel} #{after}: "after"']
    joins = subscriptions(page, channel)
    assert len(joins) == 2, joins
    assert joins[1]["since"]["offset"] == 0


def test_beyond_the_history_the_page_says_messages_lost(
    browser: Browser, cluster: Cluster, page_origin: str
) -> None:
    """More messages published while the node was away than the history
    holds: the page says "messages lost" (onLost), then shows the live
    ones; nothing of the gap is shown as if it were whole."""
    a, b = cluster.node("a"), cluster.node("b")
    channel = "room:lossy"
    page = open_page(browser, cluster, page_origin, a, channel)
    seen = publish(cluster, b, channel, "before")
    page.wait_for_line(f'{channel} #{seen}: "before"')
    stop(cluster, a, graceful=False)
    down(page)
    for n in range(HISTORY + 2):
        publish(cluster, b, channel, f"missed {n}")
    cluster.start(a)
    cluster.wait_ready(a)
    page.wait_for_line(f"{channel}: messages lost, reload")
    after = publish(cluster, a, channel, "after")
    page.wait_for_line(f'{channel} #{after}: "after"')
    assert page.lines() == [f'{channel} #{seen}: "before"',
                            f"{channel}: messages lost, reload",
                            f'{channel} #{after}: "after"']

