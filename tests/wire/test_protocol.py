"""
The opening handshake and session glue, in memory.

The real protocol and factory run over ``StringTransport``; Autobahn's
timers run on a ``task.Clock`` (see the ``clock`` fixture), so nothing
here touches the network or the wall clock.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from securews.auth.anonymous import AnonymousAuthenticator, DenyAllAuthenticator
from securews.auth.interfaces import IAuthenticator, Principal
from securews.wire.protocol import SecureServerProtocol
from tests.support.memory import (
    KEY,
    ORIGIN,
    SECRET,
    FixedAuthenticator,
    client_frame,
    connect,
    handshake,
    make_factory,
    request,
    status,
)

# -- HTTP-level routing -------------------------------------------------------


@pytest.mark.parametrize(("kw", "code"), [
    ({"path": "/other"}, 404),
    ({"path": "/ws/"}, 404),
    ({"path": "/"}, 404),
    ({"method": "POST"}, 405),
    ({"method": "DELETE", "path": "/nope"}, 404),
    ({"upgrade": False}, 426),
    ({"version": "HTTP/1.0"}, 505),
])
def test_requests_that_are_not_an_upgrade_to_the_path_are_refused(
    clock: Clock, kw: dict[str, Any], code: int
) -> None:
    """Wrong path 404, wrong method 405, no upgrade 426, HTTP/1.0 505."""
    factory = make_factory(clock, AnonymousAuthenticator())
    _, transport = handshake(factory, **kw)
    assert status(transport) == code
    assert transport.disconnecting
    assert factory.calls == []


def test_refusal_echoes_nothing_from_the_request(clock: Clock) -> None:
    """The status line and body are fixed; the path and headers are not copied."""
    factory = make_factory(clock)
    marker = "ZZMARKERZZ"
    _, transport = handshake(factory, path=f"/{marker}?token={SECRET}",
                             extra=(f"X-Evil: {marker}",))
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert marker.encode() not in response
    assert SECRET.encode() not in response
    assert response.endswith(b"\r\n\r\n404 Not Found\n")


def test_method_not_allowed_lists_get(clock: Clock) -> None:
    """405 carries Allow: GET."""
    _, transport = handshake(make_factory(clock), method="PUT")
    assert b"\r\nAllow: GET\r\n" in transport.value()


def test_upgrade_required_names_websocket(clock: Clock) -> None:
    """426 tells the client which upgrade to ask for."""
    _, transport = handshake(make_factory(clock), upgrade=False)
    assert b"\r\nUpgrade: websocket\r\n" in transport.value()


def test_no_status_page_and_no_open_redirect(clock: Clock) -> None:
    """Autobahn's status page (and its ?redirect=) is unreachable."""
    factory = make_factory(clock, AnonymousAuthenticator())
    _, transport = handshake(factory, upgrade=False,
                             path="/ws?redirect=https%3A%2F%2Fevil.example")
    response = transport.value()
    assert status(transport) == 426
    assert b"Location" not in response
    assert b"Autobahn" not in response


def test_oversized_head_is_refused_without_waiting_for_its_end(clock: Clock) -> None:
    """More than max_header_bytes without an end of head: 431 at once."""
    factory = make_factory(clock, limits={"max_header_bytes": 1024})
    proto, transport = connect(factory)
    proto.dataReceived(b"GET /ws HTTP/1.1\r\nX-Pad: " + b"a" * 1100)
    assert status(transport) == 431
    assert transport.disconnecting


def test_too_many_headers_are_refused(clock: Clock) -> None:
    """More than max_headers header lines: 431."""
    factory = make_factory(clock, limits={"max_headers": 10})
    _, transport = handshake(factory, extra=tuple(f"X-{i}: y" for i in range(10)))
    assert status(transport) == 431


def test_malformed_request_line_is_a_bad_request(clock: Clock) -> None:
    """Garbage instead of a request line gets 400."""
    proto, transport = connect(make_factory(clock))
    proto.dataReceived(b"\x16\x03\x01 hello\r\n\r\n")
    assert status(transport) == 400


def test_autobahn_refusals_do_not_echo_header_values(clock: Clock) -> None:
    """A bad Sec-WebSocket-Key is a plain 400: Autobahn's text is not sent."""
    factory = make_factory(clock, AnonymousAuthenticator())
    proto, transport = connect(factory)
    bad = request().replace(KEY.encode(), b"ZZMARKERZZ-not-base64-key")
    proto.dataReceived(bad)
    assert status(transport) == 400
    assert b"ZZMARKERZZ" not in transport.value()


# -- Origin -------------------------------------------------------------------


@pytest.mark.parametrize("origin", [
    "https://evil.example", "null", "https://app.example.com.evil.net", None,
])
def test_foreign_or_missing_origin_is_forbidden(clock: Clock,
                                                origin: str | None) -> None:
    """Outside dev mode, a foreign, null or absent Origin gets 403."""
    auth = FixedAuthenticator(Principal("alice", "fixed"))
    _, transport = handshake(make_factory(clock, auth), origin=origin)
    assert status(transport) == 403
    assert auth.requests == []


def test_duplicate_origin_headers_are_forbidden(clock: Clock) -> None:
    """Two Origin headers cannot smuggle a foreign one past the check."""
    auth = FixedAuthenticator(Principal("alice", "fixed"))
    _, transport = handshake(make_factory(clock, auth),
                             extra=("Origin: https://evil.example",))
    assert status(transport) == 403


def test_missing_origin_is_allowed_when_configured(clock: Clock) -> None:
    """allow_missing admits non-browser clients (no Origin at all)."""
    factory = make_factory(clock, AnonymousAuthenticator(),
                           origin={"allow_missing": True})
    _, transport = handshake(factory, origin=None)
    assert status(transport) == 101


# -- authentication -------------------------------------------------------------


def test_without_an_authenticator_everyone_is_refused(clock: Clock) -> None:
    """Production with no authentication configured fails closed: 401."""
    factory = make_factory(clock)
    assert isinstance(factory.policy.authenticator, DenyAllAuthenticator)
    _, transport = handshake(factory)
    assert status(transport) == 401


def test_dev_mode_admits_anonymous_clients_without_origin(clock: Clock) -> None:
    """--dev: anonymous access and a missing Origin are allowed."""
    factory = make_factory(clock, dev=True)
    proto, transport = handshake(factory, origin=None)
    assert status(transport) == 101
    assert proto.principal == Principal("anonymous", "anonymous")


def test_authenticated_session_reaches_the_application(clock: Clock) -> None:
    """A principal is set before onSessionOpen and messages echo back."""
    alice = Principal("alice", "fixed", {"role": "admin"})
    auth = FixedAuthenticator(alice)
    factory = make_factory(clock, auth)
    proto, transport = handshake(factory, extra=("Sec-WebSocket-Protocol: chat.v1",))
    response = transport.value()
    assert status(transport) == 101
    assert b"Sec-WebSocket-Protocol: chat.v1\r\n" in response
    assert b"Server:" not in response
    assert auth.requests[0].client == "203.0.113.7"
    assert auth.requests[0].origin == ORIGIN
    assert factory.calls == [("open", alice)]
    assert factory.policy.open_sessions == 1
    transport.clear()
    proto.dataReceived(client_frame(b"hello"))
    assert factory.calls[-1] == ("message", b"hello", False)
    assert transport.value() == b"\x81\x05hello"


def test_authenticator_may_answer_later(clock: Clock) -> None:
    """The handshake waits for an asynchronous authenticator."""
    pending: Deferred[Principal | None] = Deferred()
    factory = make_factory(clock, FixedAuthenticator(pending))
    _, transport = handshake(factory)
    assert transport.value() == b""
    pending.callback(Principal("bob", "fixed"))
    assert status(transport) == 101


def test_crashing_authenticator_denies_and_leaks_nothing(
    clock: Clock, events: list[LogEvent]
) -> None:
    """An authenticator error is a 500 whose text reaches neither client nor log."""
    auth = FixedAuthenticator(RuntimeError(f"bad token {SECRET}"))
    factory = make_factory(clock, auth)
    _, transport = handshake(factory)
    assert status(transport) == 500
    assert SECRET.encode() not in transport.value()
    assert any(e.get("error") == "RuntimeError" for e in events)
    assert SECRET not in repr(events)


def test_handshake_log_has_path_without_query(
    clock: Clock, events: list[LogEvent]
) -> None:
    """The handshake event names the path but never the query string."""
    factory = make_factory(clock, FixedAuthenticator(Principal("a", "fixed")))
    handshake(factory, path=f"/ws?ticket={SECRET}")
    accepted = [e for e in events if e.get("event") == "handshake"]
    assert accepted[0]["outcome"] == "accepted"
    assert accepted[0]["path"] == "/ws"
    assert SECRET not in repr(events)


def test_application_cannot_override_the_security_path() -> None:
    """Subclasses that override onConnect or onMessage fail at definition."""
    with pytest.raises(TypeError, match="onMessage"):
        type("Bad", (SecureServerProtocol,), {"onMessage": lambda *a: None})
    with pytest.raises(TypeError, match="onConnect"):
        type("Bad", (SecureServerProtocol,), {"onConnect": lambda *a: None})


def test_authenticators_provide_the_interface() -> None:
    """The built-in authenticators implement IAuthenticator."""
    assert verifyObject(IAuthenticator, AnonymousAuthenticator())
    assert verifyObject(IAuthenticator, DenyAllAuthenticator())


# -- capacity, plaintext, shutdown ------------------------------------------------


def test_server_full_is_503_with_retry_after(clock: Clock) -> None:
    """At max_connections sessions, new handshakes get 503; a place frees up."""
    factory = make_factory(clock, AnonymousAuthenticator(),
                           server={"max_connections": 1})
    first, transport = handshake(factory)
    assert status(transport) == 101
    _, transport = handshake(factory)
    assert status(transport) == 503
    assert b"\r\nRetry-After: " in transport.value()
    first.connectionLost(Failure(ConnectionLost()))
    assert status(handshake(factory)[1]) == 101


def test_handshakes_waiting_for_authentication_count_as_connections(
    clock: Clock
) -> None:
    """Pending authentications hold a place, so a slow auth cannot overshoot."""
    pending: Deferred[Principal | None] = Deferred()
    factory = make_factory(clock, FixedAuthenticator(pending),
                           server={"max_connections": 1})
    waiting, _ = handshake(factory)
    _, transport = handshake(factory)
    assert status(transport) == 503
    waiting.connectionLost(Failure(ConnectionLost()))
    assert len(factory.policy.capacity) == 0
    pending.callback(Principal("late", "fixed"))
    assert factory.policy.open_sessions == 0


def test_plaintext_serves_only_trusted_proxies(clock: Clock) -> None:
    """With TLS off, a peer outside trusted_proxies is dropped unanswered."""
    factory = make_factory(clock, AnonymousAuthenticator(), tls={"enabled": False},
                           server={"trusted_proxies": ["10.0.0.0/8"]})
    _, transport = connect(factory, peer="203.0.113.9")
    assert transport.disconnected
    proxied, transport = connect(factory, peer="10.1.2.3")
    assert not transport.disconnecting
    proxied.dataReceived(request())
    assert status(transport) == 101


def test_shutdown_sends_going_away_then_aborts_after_grace(clock: Clock) -> None:
    """shutdown(): 1001 close frame now; TCP aborted once the grace ends."""
    factory = make_factory(clock, AnonymousAuthenticator(),
                           limits={"close_timeout": 60})
    proto, transport = handshake(factory)
    transport.clear()
    done = factory.shutdown(grace=5)
    frame = transport.value()
    assert frame[0] == 0x88
    assert struct.unpack("!H", frame[2:4])[0] == 1001
    clock.advance(4.9)
    assert not transport.disconnected
    assert not done.called
    clock.advance(0.2)
    assert transport.disconnected
    proto.connectionLost(Failure(ConnectionLost()))
    assert done.called
    assert factory.calls[-1] == ("close", 1006)


def test_peer_silent_after_close_frame_is_dropped_at_close_timeout(
    clock: Clock
) -> None:
    """A peer that never answers our close frame loses TCP at close_timeout."""
    factory = make_factory(clock, AnonymousAuthenticator(),
                           limits={"close_timeout": 2})
    _, transport = handshake(factory)
    factory.shutdown(grace=60)
    clock.advance(1.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


def test_shutdown_finishes_when_peers_answer_the_close(clock: Clock) -> None:
    """A peer that completes the close handshake ends shutdown early."""

    factory = make_factory(clock, AnonymousAuthenticator())
    proto, _ = handshake(factory)
    done = factory.shutdown(grace=5)
    proto.dataReceived(client_frame(struct.pack("!H", 1001), opcode=0x8))
    proto.connectionLost(Failure(ConnectionDone()))
    assert done.called
    assert factory.connection_count == 0
    assert factory.calls[-1] == ("close", 1001)
    assert clock.getDelayedCalls() == [] or all(
        not c.active() for c in clock.getDelayedCalls())


# -- regressions from the security review --------------------------------------


def test_refused_connection_is_aborted_if_the_peer_lingers(clock: Clock) -> None:
    """A peer that never closes after a refusal is aborted at close_timeout."""
    factory = make_factory(clock, limits={"close_timeout": 2})
    proto, transport = handshake(factory)
    assert status(transport) == 401
    assert len(factory.policy.capacity) == 0
    proto.dataReceived(b"x" * 100_000)
    assert len(proto.data) < 1000
    clock.advance(1.9)
    assert not transport.disconnected
    clock.advance(0.2)
    assert transport.disconnected


def test_closed_session_is_aborted_if_tcp_lingers(clock: Clock) -> None:
    """After a completed close handshake the TCP connection cannot linger."""
    factory = make_factory(clock, AnonymousAuthenticator(),
                           limits={"close_timeout": 2})
    proto, transport = handshake(factory)
    proto.dataReceived(client_frame(struct.pack("!H", 1000), opcode=0x8))
    assert transport.disconnecting
    clock.advance(2.1)
    assert transport.disconnected
    proto.connectionLost(Failure(ConnectionDone()))
    assert factory.policy.open_sessions == 0
    assert clock.getDelayedCalls() == [] or all(
        not c.active() for c in clock.getDelayedCalls())


class LaxMixin:
    def onConnect(self, request: object) -> None:
        return None


@pytest.mark.parametrize("namespace", [
    {"carry_out": lambda self, action: None},
    {"dropConnection": lambda self, abort=False: None},
    {"maxMessagePayloadSize": 0},
    {"openHandshakeTimeout": 0},
    {"perMessageCompressionAccept": staticmethod(lambda offers: offers[0])},
])
def test_security_path_and_limits_cannot_be_overridden(
    namespace: dict[str, object]
) -> None:
    """Private checks and Autobahn option attributes are sealed too."""
    with pytest.raises(TypeError, match=next(iter(namespace))):
        type("Bad", (SecureServerProtocol,), namespace)


def test_mixin_cannot_slip_a_sealed_method_in_front() -> None:
    """A mixin earlier in the MRO cannot replace onConnect."""
    with pytest.raises(TypeError, match="onConnect"):
        type("Bad", (LaxMixin, SecureServerProtocol), {})


@pytest.mark.parametrize("result", [False, "", {}, "alice", 0])
def test_authenticator_returning_a_non_principal_is_refused(
    clock: Clock, result: object
) -> None:
    """Only a Principal admits a client; anything else is a 500, not a 101."""
    factory = make_factory(clock, FixedAuthenticator(result))
    _, transport = handshake(factory)
    assert status(transport) == 500


def test_origin_with_unicode_digit_port_is_refused_cleanly(
    clock: Clock, events: list[LogEvent]
) -> None:
    """A port of superscript digits is a 403, not an exception."""
    factory = make_factory(clock, FixedAuthenticator(Principal("a", "fixed")))
    proto, transport = connect(factory)
    proto.dataReceived(request(origin=None, extra=(
        "Origin: https://app.example.com:\xb2\xb3",)))
    assert status(transport) == 403


def test_logged_path_and_origin_are_normalised(
    clock: Clock, events: list[LogEvent]
) -> None:
    """Only the WebSocket path and parsed origins are logged verbatim."""
    factory = make_factory(clock)
    handshake(factory, path=f"/ws;ticket={SECRET}")
    handshake(factory, origin=f"https://x/{SECRET}")
    handshake(factory, origin="HTTPS://APP.example.com:443")
    logged = [(e["path"], e["origin"]) for e in events if e.get("event") == "handshake"]
    assert logged == [("other", ORIGIN), ("/ws", "invalid"), ("/ws", ORIGIN)]
    assert SECRET not in repr(events)


def test_version_mismatch_says_which_version_is_spoken(clock: Clock) -> None:
    """An unsupported Sec-WebSocket-Version gets 400 naming version 13."""
    factory = make_factory(clock, AnonymousAuthenticator())
    proto, transport = connect(factory)
    proto.dataReceived(request().replace(b"Version: 13", b"Version: 99"))
    assert status(transport) == 400
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in transport.value()


def test_accepted_is_logged_only_once_the_session_is_open(
    clock: Clock, events: list[LogEvent]
) -> None:
    """Autobahn refusing after onConnect yields one 'refused' event, no 'accepted'."""
    factory = make_factory(clock, FixedAuthenticator(Principal("a", "fixed")))
    proto, transport = connect(factory)
    proto.dataReceived(request(extra=(
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99",)))
    outcomes = [e["outcome"] for e in events if e.get("event") == "handshake"]
    assert status(transport) == 400
    assert outcomes == ["refused"]
