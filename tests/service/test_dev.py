"""
Development mode's settings and page, in memory: the loopback Origins a
browser page on this machine sends, never ``null``, and ``GET /``.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent

from securews.rules.origin import origin_allowed
from securews.service.dev import DEV_ORIGINS, dev_config
from securews.testing import read_response
from securews.wire.factory import SecureServerFactory
from tests.support.memory import connect, request

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.mark.parametrize("origin", [
    "http://localhost:8000", "https://localhost:8443", "http://localhost",
    "http://127.0.0.1:5173", "https://127.0.0.1:8443", "http://[::1]:3000",
    "https://[::1]:8443",
])
def test_dev_mode_allows_pages_served_from_this_machine(state: Path,
                                                        origin: str) -> None:
    """A page from localhost, 127.0.0.1 or [::1], on any port and scheme."""
    config = dev_config(state, now=NOW)
    assert origin_allowed(origin, config.origin.allowed, allow_missing=False)


@pytest.mark.parametrize("origin", [
    "null", "https://evil.example", "http://localhost.evil.example:8000",
    "http://127.0.0.2:8000", "http://[::2]:8000", "file://", "chrome-extension://x",
])
def test_dev_mode_still_refuses_other_origins_and_null(state: Path,
                                                       origin: str) -> None:
    """Loopback only; ``null`` (file: pages, sandboxed frames) never."""
    config = dev_config(state, now=NOW)
    assert not origin_allowed(origin, config.origin.allowed, allow_missing=True)


def test_allow_origin_adds_to_the_loopback_origins(state: Path) -> None:
    """--allow-origin in dev mode extends the list rather than replacing it."""
    config = dev_config(state, now=NOW, overrides={
        "origin": {"allowed": ["https://app.example.com"]}})
    assert config.origin.allowed.entries == (*DEV_ORIGINS, "https://app.example.com")


def _dev_factory(state: Path, clock: Clock) -> SecureServerFactory:
    return SecureServerFactory(dev_config(state, now=NOW), reactor=clock)


def test_dev_server_answers_get_slash_with_the_page(
    state: Path, clock: Clock, events: list[LogEvent]
) -> None:
    """The real protocol serves the page, logs it as path / and closes."""
    factory = _dev_factory(state, clock)
    proto, transport = connect(factory)
    proto.dataReceived(request("/", upgrade=False, origin=None))
    parsed = read_response(transport.value())
    assert parsed is not None
    response, _ = parsed
    assert response.status == 200
    assert b"new WebSocket(url)" in response.body
    assert b'const path = "/ws";' in response.body
    lines = [formatEvent(e) for e in events if e.get("event") == "handshake"]
    assert lines == ["handshake page 200 from 203.0.113.7 path=/ origin=None "
                     "method=None reason=None"]
    clock.advance(factory.config.limits.close_timeout)
    assert transport.disconnecting


def test_dev_server_upgrades_a_loopback_page(state: Path, clock: Clock,
                                             events: list[LogEvent]) -> None:
    """The page's own Origin (https://127.0.0.1:PORT) gets its 101."""
    factory = _dev_factory(state, clock)
    proto, transport = connect(factory)
    proto.dataReceived(request("/ws", origin="https://127.0.0.1:8443"))
    parsed = read_response(transport.value())
    assert parsed is not None
    assert parsed[0].status == 101
    lines = [formatEvent(e) for e in events if e.get("event") == "handshake"]
    assert lines == ["handshake accepted 101 from 203.0.113.7 path=/ws "
                     "origin=https://127.0.0.1:8443 method=anonymous reason=None "
                     "principal=anonymous"]
