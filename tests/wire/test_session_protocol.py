"""
Session limits on the real protocol, in memory, on a Clock: heartbeats,
idle and lifetime closes, throttling, fragments, sizes and validation.
"""

from __future__ import annotations

import gc
import struct
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent

from securews.auth.anonymous import AnonymousAuthenticator
from securews.auth.interfaces import AuthenticationFailed, Principal
from securews.testing import make_config
from securews.wire._autobahn import HANDSHAKE_STATE
from securews.wire.factory import SecureServerFactory
from securews.wire.protocol import SecureServerProtocol
from tests.support.memory import (
    SECRET,
    FixedAuthenticator,
    connect,
    handshake,
    make_factory,
    request,
    status,
)


def open_session(clock: Clock, **sections: Any) -> tuple[Any, StringTransport]:
    factory = make_factory(clock, AnonymousAuthenticator(), **sections)
    proto, transport = handshake(factory)
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    transport.clear()
    return proto, transport


def frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """A masked client frame of any length (all-zero mask)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    return header + b"\0\0\0\0" + payload


def close_code(data: bytes) -> int | None:
    """The code of the first close frame the server wrote, if any."""
    i = 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length, i = struct.unpack("!H", data[i:i + 2])[0], i + 2
        elif length == 127:
            length, i = struct.unpack("!Q", data[i:i + 8])[0], i + 8
        if opcode == 0x8:
            return int(struct.unpack("!H", data[i:i + 2])[0])
        i += length
    return None


def test_idle_session_is_closed_at_idle_timeout(clock: Clock) -> None:
    """No data message for idle_timeout: close 1000, not a moment before."""
    _proto, transport = open_session(clock, limits={
        "idle_timeout": 30, "ping_interval": 1000})
    clock.advance(29.9)
    assert close_code(transport.value()) is None
    clock.advance(0.2)
    assert close_code(transport.value()) == 1000
    assert b"idle timeout" in transport.value()


def test_silent_peer_is_dropped_after_ping_timeout(
    clock: Clock, events: list[LogEvent]
) -> None:
    """A ping at ping_interval; no answer by ping_timeout: TCP dropped."""
    _proto, transport = open_session(clock, limits={
        "ping_interval": 5, "ping_timeout": 2, "idle_timeout": 1000})
    clock.advance(5)
    assert transport.value()[0] == 0x89
    clock.advance(1.9)
    assert not transport.disconnected
    clock.advance(0.2)
    assert transport.disconnected
    assert any(e.get("reason") == "dead_peer" for e in events)


def test_pong_keeps_a_session_alive(clock: Clock) -> None:
    """A peer answering pings is never dropped for being silent."""
    proto, transport = open_session(clock, limits={
        "ping_interval": 5, "ping_timeout": 2, "idle_timeout": 1000})
    for _ in range(5):
        clock.advance(5)
        proto.dataReceived(frame(b"", opcode=0xA))
    clock.advance(3)
    assert not transport.disconnected


def test_lifetime_closes_with_1001(clock: Clock) -> None:
    """A session older than max_lifetime is closed 1001 'session lifetime'."""
    _proto, transport = open_session(clock, limits={
        "max_lifetime": 60, "idle_timeout": 1000, "ping_interval": 1000})
    clock.advance(60)
    assert close_code(transport.value()) == 1001
    assert b"session lifetime" in transport.value()


def test_message_flood_is_closed_1008(clock: Clock) -> None:
    """Over message_burst messages at once: 1008 'rate limit exceeded'."""
    proto, transport = open_session(clock, ratelimit={
        "messages_per_second": 1, "message_burst": 5}, limits={"max_fragments": 5})
    proto.dataReceived(b"".join(frame(b"x") for _ in range(10)))
    assert close_code(transport.value()) == 1008
    assert transport.value().count(b"\x81\x01x") == 5


def test_byte_flood_is_closed_1008(clock: Clock) -> None:
    """Bytes over bytes_burst at once: 1008."""
    proto, transport = open_session(clock, ratelimit={
        "bytes_per_second": 1000, "bytes_burst": 65536})
    proto.dataReceived(frame(b"a" * 60000) + frame(b"b" * 60000))
    assert close_code(transport.value()) == 1008


def test_too_many_fragments_are_closed_1009(clock: Clock) -> None:
    """A message in more than max_fragments frames: 1009."""
    proto, transport = open_session(clock, limits={"max_fragments": 4})
    data = frame(b"a", fin=False) + b"".join(
        frame(b"a", opcode=0x0, fin=False) for _ in range(10))
    proto.dataReceived(data)
    assert close_code(transport.value()) == 1009


def test_oversize_frame_is_closed_1009_from_its_header(clock: Clock) -> None:
    """A frame header announcing more than max_frame_size: 1009 before its payload."""
    proto, transport = open_session(clock, limits={
        "max_frame_size": 1024, "max_message_size": 4096})
    header = struct.pack("!BBH", 0x82, 0x80 | 126, 2000) + b"\0\0\0\0"
    proto.dataReceived(header)
    assert close_code(transport.value()) == 1009


def test_oversize_fragmented_message_is_closed_1009(clock: Clock) -> None:
    """Frames under the frame limit that add up past max_message_size: 1009."""
    proto, transport = open_session(clock, limits={
        "max_frame_size": 1024, "max_message_size": 2048})
    proto.dataReceived(frame(b"a" * 1000, fin=False)
                       + frame(b"a" * 1000, opcode=0, fin=False)
                       + frame(b"a" * 1000, opcode=0))
    assert close_code(transport.value()) == 1009


@pytest.mark.parametrize(("sections", "data", "code"), [
    ({}, frame(b"\xff\xfe"), 1007),
    ({"messages": {"allow_binary": False}}, frame(b"\x00", opcode=0x2), 1003),
    ({"messages": {"format": "json"}}, frame(b"{not json"), 1007),
    ({"messages": {"format": "json", "max_json_depth": 3}},
     frame(b"[[[[1]]]]"), 1007),
])
def test_invalid_messages_are_closed_and_not_delivered(
    clock: Clock, sections: dict[str, Any], data: bytes, code: int
) -> None:
    """Bad UTF-8, refused binary, bad or too-deep JSON: closed, never echoed."""
    proto, transport = open_session(clock, **sections)
    proto.dataReceived(data)
    assert close_code(transport.value()) == code
    assert proto.factory.calls == [("open", proto.principal)]


def test_valid_json_reaches_the_application(clock: Clock) -> None:
    """A message that passes validation is delivered and echoed."""
    proto, transport = open_session(clock, messages={"format": "json"})
    proto.dataReceived(frame(b'{"a": [1, 2]}'))
    assert proto.factory.calls[-1] == ("message", b'{"a": [1, 2]}', False)
    assert close_code(transport.value()) is None


def test_one_timer_per_session_not_per_message(clock: Clock) -> None:
    """Messages do not add timers: the session keeps a single deadline."""
    proto, _ = open_session(clock)
    before = len(clock.getDelayedCalls())
    for _ in range(50):
        proto.dataReceived(frame(b"x"))
    assert len(clock.getDelayedCalls()) == before


def test_unfinished_handshake_is_dropped_at_handshake_timeout(clock: Clock) -> None:
    """A head dribbled a byte at a time is dropped once handshake_timeout passes."""
    factory = make_factory(clock, AnonymousAuthenticator(),
                           limits={"handshake_timeout": 3})
    proto, transport = connect(factory)
    head = request()
    for i in range(20):
        proto.dataReceived(head[i:i + 1])
        clock.advance(0.1)
    clock.advance(0.9)
    assert not (transport.disconnecting)
    assert not (transport.disconnected)
    # Autobahn's timers are batched into one-second buckets: allow one more.
    clock.advance(1.1)
    assert transport.disconnecting or transport.disconnected


# -- regressions from the in-session security review ----------------------------


def test_ping_flood_is_a_message_flood(clock: Clock) -> None:
    """Pings are charged to the message bucket: a flood of them is 1008."""
    proto, transport = open_session(clock, ratelimit={
        "messages_per_second": 1, "message_burst": 5}, limits={"max_fragments": 5})
    proto.dataReceived(b"".join(frame(b"p", opcode=0x9) for _ in range(50)))
    assert close_code(transport.value()) == 1008
    assert transport.value().count(b"\x8a\x01p") == 5


@pytest.mark.parametrize("opcode", [0x9, 0xA])
def test_unsolicited_pong_flood_is_closed_1008(clock: Clock, opcode: int) -> None:
    """Empty pongs (and pings) cost a token each: past the burst, 1008."""
    proto, transport = open_session(clock, ratelimit={
        "messages_per_second": 1, "message_burst": 5}, limits={"max_fragments": 5})
    proto.dataReceived(b"".join(frame(b"", opcode=opcode) for _ in range(6)))
    assert close_code(transport.value()) == 1008
    assert b"rate limit exceeded" in transport.value()


def test_control_frame_bytes_count_against_the_byte_bucket(clock: Clock) -> None:
    """125-byte pongs move no more than bytes_burst before 1008."""
    proto, transport = open_session(clock, ratelimit={
        "bytes_per_second": 1, "bytes_burst": 65536, "message_burst": 10**6})
    proto.dataReceived(b"".join(frame(b"p" * 125, opcode=0xA) for _ in range(524)))
    assert close_code(transport.value()) is None
    proto.dataReceived(frame(b"p" * 125, opcode=0xA))
    assert close_code(transport.value()) == 1008


def test_a_flooder_is_read_no_more_once_closed(clock: Clock) -> None:
    """After the rate-limit close the buffer is dropped and reading stops;
    the connection goes at close_timeout."""
    proto, transport = open_session(clock, ratelimit={
        "messages_per_second": 1, "message_burst": 5}, limits={
        "max_fragments": 5, "close_timeout": 2})
    flood = b"".join(frame(b"", opcode=0xA) for _ in range(1000))
    proto.dataReceived(flood)
    assert close_code(transport.value()) == 1008
    assert transport.producerState == "paused"
    assert proto.data == b""
    clock.advance(2)
    assert transport.disconnecting or transport.disconnected


def test_oversized_control_frame_is_not_buffered(clock: Clock) -> None:
    """A ping announcing gigabytes: 1002 and nothing more is read."""
    proto, transport = open_session(clock)
    header = struct.pack("!BBQ", 0x89, 0x80 | 127, 2**40) + b"\0\0\0\0"
    proto.dataReceived(header + b"x" * 100_000)
    assert close_code(transport.value()) == 1002
    proto.dataReceived(b"x" * 1_000_000)
    assert len(proto.data) < 1000
    assert sum(len(c) for c in getattr(proto, "control_frame_data", None) or []) < 1000


def test_data_after_our_close_is_not_delivered(clock: Clock) -> None:
    """Once the server has sent its close, further messages are skipped."""
    proto, transport = open_session(clock, ratelimit={
        "messages_per_second": 1, "message_burst": 1}, limits={"max_fragments": 1})
    proto.dataReceived(frame(b"a") + frame(b"b") + frame(b"c") + frame(b"d"))
    assert close_code(transport.value()) == 1008
    assert [c for c in proto.factory.calls if c[0] == "message"] == [
        ("message", b"a", False)]


def test_close_reasons_are_fixed_text(clock: Clock) -> None:
    """Autobahn's own wording (library, limits) never reaches the client."""
    proto, transport = open_session(clock, limits={
        "max_frame_size": 1024, "max_message_size": 4096})
    proto.dataReceived(struct.pack("!BBH", 0x82, 0x80 | 126, 2000) + b"\0\0\0\0")
    sent = transport.value()
    assert close_code(sent) == 1009
    assert b"message too big" in sent
    assert b"1024" not in sent
    assert b"octets" not in sent


class Crashing(SecureServerProtocol):
    def onSessionOpen(self) -> None:
        raise KeyError("app bug")


def test_application_error_closes_1011(clock: Clock, events: list[LogEvent]) -> None:
    """An exception in an application hook closes the session 1011."""
    factory = SecureServerFactory(
        make_config(tls={"cert": "/c", "key": "/k"}, origin={"allow_missing": True},
                    auth={"methods": []}),
        protocol=Crashing, authenticator=AnonymousAuthenticator(), reactor=clock)
    proto, transport = connect(factory)
    proto.dataReceived(request(origin=None))
    assert close_code(transport.value().split(b"\r\n\r\n", 1)[1]) == 1011
    assert any(e.get("error") == "KeyError" for e in events)
    assert "app bug" not in repr([e for e in events if e.get("event")])


class Listening(SecureServerProtocol):
    """Registers an Autobahn ``message`` listener, which securews's fast
    path must still honour."""

    def onSessionOpen(self) -> None:
        self.heard: list[bytes] = []
        self.on("message", lambda payload, is_binary: self.heard.append(payload))

    def onValidatedMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def test_message_listeners_still_fire(clock: Clock) -> None:
    factory = SecureServerFactory(
        make_config(tls={"cert": "/c", "key": "/k"}, origin={"allow_missing": True},
                    auth={"methods": []}),
        protocol=Listening, authenticator=AnonymousAuthenticator(), reactor=clock)
    proto, transport = connect(factory)
    proto.dataReceived(request(origin=None))
    transport.clear()
    proto.dataReceived(frame(b"one") + frame(b"two"))
    assert proto.heard == [b"one", b"two"]
    assert transport.value() == b"\x81\x03one\x81\x03two"


def test_frames_split_across_reads_are_echoed_and_counted(clock: Clock) -> None:
    """Byte-at-a-time delivery reassembles; Autobahn's wire counters still
    count what securews writes and reads on its own fast path."""
    proto, transport = open_session(clock)
    data = frame(b"hello") + frame(b"x" * 300)
    for i in range(len(data)):
        proto.dataReceived(data[i:i + 1])
    assert transport.value() == b"\x81\x05hello\x81\x7e\x01\x2c" + b"x" * 300
    assert proto.factory.calls[-2:] == [("message", b"hello", False),
                                        ("message", b"x" * 300, False)]
    stats = proto.trafficStats
    assert stats.incomingOctetsWireLevel == len(data)
    assert stats.outgoingOctetsWireLevel == len(transport.value())


class Unlimited(SecureServerProtocol):
    """Tries to lift the message limit at run time, where the class seal
    cannot see: on open, or on its first message."""

    lift_on_open = True

    def onSessionOpen(self) -> None:
        if self.lift_on_open:
            self.maxMessagePayloadSize = 0

    def onValidatedMessage(self, payload: bytes, isBinary: bool) -> None:
        self.maxMessagePayloadSize = 0


class UnlimitedLater(Unlimited):
    lift_on_open = False


def unlimited_session(clock: Clock, protocol: type[SecureServerProtocol]
                      ) -> tuple[Any, StringTransport]:
    factory = SecureServerFactory(
        make_config(tls={"cert": "/c", "key": "/k"}, origin={"allow_missing": True},
                    auth={"methods": []}, limits={"max_message_size": 4096,
                                                  "max_frame_size": 4096}),
        protocol=protocol, authenticator=AnonymousAuthenticator(), reactor=clock)
    proto, transport = connect(factory)
    proto.dataReceived(request(origin=None))
    return proto, transport


@pytest.mark.parametrize("protocol", [Unlimited, UnlimitedLater])
def test_reassigning_a_limit_closes_1011_and_the_limit_holds(
        clock: Clock, events: list[LogEvent],
        protocol: type[SecureServerProtocol]) -> None:
    proto, transport = unlimited_session(clock, protocol)
    if protocol is UnlimitedLater:
        proto.dataReceived(frame(b"hi"))
    assert close_code(transport.value().split(b"\r\n\r\n", 1)[1]) == 1011
    assert any(e.get("error") == "AttributeError" for e in events)
    assert proto.maxMessagePayloadSize == 4096


def test_factory_options_that_securews_pins_cannot_be_changed(clock: Clock) -> None:
    """Not on the factory either, where it would lift the limit for every
    later session."""
    factory = make_factory(clock, AnonymousAuthenticator(),
                           limits={"max_message_size": 4096, "max_frame_size": 4096})
    with pytest.raises(TypeError, match="maxMessagePayloadSize"):
        factory.setProtocolOptions(maxMessagePayloadSize=0)
    with pytest.raises(AttributeError):
        factory.pinned_options.maxFramePayloadSize = 0
    factory.setProtocolOptions(autoFragmentSize=1000)  # not a securews option
    proto, transport = handshake(factory)
    transport.clear()
    proto.dataReceived(frame(b"x" * 5000))
    assert close_code(transport.value()) == 1009
    assert proto.versions == (13,)


def test_pinned_options_are_read_only_on_every_protocol() -> None:
    from securews.wire._options import PINNED_OPTIONS
    for name in PINNED_OPTIONS:
        assert isinstance(getattr(SecureServerProtocol, name), property), name
        assert name in WebSocketServerProtocol.CONFIG_ATTRS, name


def test_every_other_autobahn_option_is_read_from_the_factory(clock: Clock) -> None:
    """
    The options securews does not pin are not copied onto each session
    (Autobahn's loop would format them all for a debug line, and each copy
    is a dict entry per connection): a session reads its factory's value,
    a later change included, until it sets its own.  Every Autobahn
    option is either pinned or read so, and Autobahn's loop has nothing
    to copy.
    """
    from securews.wire._options import FACTORY_OPTIONS, PINNED_OPTIONS

    assert set(FACTORY_OPTIONS) | set(PINNED_OPTIONS) == set(
        WebSocketServerProtocol.CONFIG_ATTRS)
    assert SecureServerProtocol.CONFIG_ATTRS == ()
    factory = make_factory(clock, AnonymousAuthenticator())
    factory.setProtocolOptions(autoFragmentSize=1000)
    proto, _ = handshake(factory)
    for name in FACTORY_OPTIONS:
        assert name not in vars(proto), name
        assert getattr(proto, name) == getattr(factory, name), name
    assert proto.autoFragmentSize == 1000
    factory.setProtocolOptions(autoFragmentSize=2000)
    assert proto.autoFragmentSize == 2000
    other, _ = handshake(factory)
    proto.setTrackTimings(True)
    assert proto.trackTimings is True
    assert factory.trackTimings is False
    assert other.trackTimings is False
    factory.setProtocolOptions(autoFragmentSize=3000)  # still the factory's
    assert proto.autoFragmentSize == other.autoFragmentSize == 3000
    # A protocol its factory did not build reads the factory all the same.
    stray = SecureServerProtocol()
    stray.factory = factory
    assert stray.autoFragmentSize == 3000


# -- a session never outlives its credential ---------------------------------------


def expiring_session(clock: Clock, principal: Principal) -> tuple[Any, Any]:
    factory = make_factory(clock, FixedAuthenticator(principal),
                           limits={"idle_timeout": 1000, "ping_interval": 1000})
    proto, transport = handshake(factory)
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    transport.clear()
    return proto, transport


def test_session_closes_4401_when_its_credential_expires(clock: Clock) -> None:
    """Open an epsilon before the credential's expiry; 4401 at it."""
    clock.advance(1000)
    proto, transport = expiring_session(
        clock, Principal("alice", "jwt", expires_at=1030.0))
    clock.advance(29.999)
    assert close_code(transport.value()) is None
    clock.advance(0.001)
    assert close_code(transport.value()) == 4401
    assert b"credential expired" in transport.value()
    assert proto.factory.metrics.registry.get_sample_value(
        "securews_server_closes_total", {"category": "credential_expired"}) == 1


def test_a_renewed_credential_keeps_its_session(clock: Clock) -> None:
    """At expiry the credential is asked about again; a yes moves the
    deadline, and the application sees the renewed principal."""
    answers: list[Deferred[Principal]] = []

    def renew() -> Deferred[Principal]:
        answers.append(Deferred())
        return answers[-1]

    proto, transport = expiring_session(
        clock, Principal("alice", "cookie", expires_at=30.0, renew=renew))
    clock.advance(30)
    assert len(answers) == 1
    clock.advance(5)  # the answer is awaited: no second question, no close
    assert len(answers) == 1
    answers[0].callback(Principal("alice", "cookie", {"fresh": True},
                                  expires_at=65.0, renew=renew))
    assert proto.principal.claims == {"fresh": True}
    clock.advance(29.9)
    assert close_code(transport.value()) is None
    assert len(answers) == 1
    clock.advance(0.1)
    assert len(answers) == 2
    answers[1].errback(AuthenticationFailed("rejected"))
    assert close_code(transport.value()) == 4401


@pytest.mark.parametrize("answer", [
    RuntimeError("introspection unreachable"),
    Principal("mallory", "cookie", expires_at=1e9),
    Principal("alice", "cookie", expires_at=9.0),
], ids=["no-answer", "another-principal", "already-over"])
def test_a_credential_not_vouched_for_again_closes_4401(
    clock: Clock, answer: object
) -> None:
    """No answer (fail closed), an answer about someone else, or one whose
    expiry has passed already: 4401, asked once (never a loop)."""
    asked = []

    def renew() -> Deferred[Principal]:
        asked.append(1)
        return fail(answer) if isinstance(answer, Exception) else succeed(answer)

    _, transport = expiring_session(
        clock, Principal("alice", "cookie", expires_at=10.0, renew=renew))
    clock.advance(10)
    assert close_code(transport.value()) == 4401
    assert asked == [1]


# -- the parsed JSON document, parsed once -------------------------------------------


class DocumentReader(SecureServerProtocol):
    def onValidatedMessage(self, payload: bytes, isBinary: bool,
                           document: object = None) -> None:
        self.factory.calls.append(("document", document))


class PayloadReader(SecureServerProtocol):
    def onValidatedMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.calls.append(("payload", payload))


@pytest.mark.parametrize("fmt", ["json", "any"])
def test_an_application_may_take_the_parsed_document(clock: Clock, fmt: str) -> None:
    """With a ``document`` parameter the application gets the validator's
    parsed JSON (with format = "json"; None otherwise); without one it is
    called as before."""
    for app, expected in ((DocumentReader, ("document", {"n": [1, 2]}
                                            if fmt == "json" else None)),
                          (PayloadReader, ("payload", b'{"n": [1, 2]}'))):
        factory = make_factory(clock, AnonymousAuthenticator(), dev=True,
                               messages={"format": fmt})
        factory.protocol = app
        proto, _transport = handshake(factory)
        proto.dataReceived(frame(b'{"n": [1, 2]}'))
        assert factory.calls == [expected]


def test_a_principal_already_expired_never_gets_a_session(clock: Clock) -> None:
    """An authenticator vouching for a credential that is over: 401, and the
    application never runs."""
    clock.advance(100)
    factory = make_factory(clock, FixedAuthenticator(
        Principal("alice", "jwt", expires_at=100.0)))
    _, transport = handshake(factory)
    assert transport.value().startswith(b"HTTP/1.1 401 ")
    assert factory.calls == []


@pytest.mark.parametrize("trigger", ["oversize", "binary", "idle"])
def test_frames_after_our_close_are_charged_and_cut_off(
    clock: Clock, trigger: str
) -> None:
    """Once the server has sent its close (1009, 1003, idle...), a peer that
    floods instead of answering is still charged, and aborted when its
    budget is gone: nothing is parsed for free until close_timeout."""
    proto, transport = open_session(
        clock, ratelimit={"messages_per_second": 1, "message_burst": 50},
        limits={"max_fragments": 50, "max_frame_size": 1024,
                "max_message_size": 1024, "idle_timeout": 5, "close_timeout": 30},
        messages={"allow_binary": False})
    if trigger == "oversize":  # the announced payload is skipped, unread
        proto.dataReceived(struct.pack("!BBH", 0x82, 0x80 | 126, 2000) + b"\0" * 4
                           + b"x" * 2000)
    elif trigger == "binary":
        proto.dataReceived(frame(b"b", opcode=0x2))
    else:
        clock.advance(5)
    assert close_code(transport.value()) in (1009, 1003, 1000)
    assert not transport.disconnecting
    proto.dataReceived(b"".join(frame(b"", opcode=0x9) for _ in range(100)))
    assert transport.disconnecting or transport.disconnected
    assert proto.data == b""


# -- an open session holds no copy of its handshake ------------------------------


def _reachable(roots: list[object], stop: set[int]) -> Iterator[object]:
    """Every object reachable from ``roots``, not through ``stop``'s."""
    seen: set[int] = set(stop)
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type | ModuleType):
            continue
        seen.add(id(obj))
        yield obj
        todo.extend(gc.get_referents(obj))


def test_an_open_session_keeps_nothing_of_its_request(clock: Clock) -> None:
    """
    Once onSessionOpen has returned, the session holds no copy of its
    request head (nor the credential in it): not securews's parsed head or
    admission's run, not Autobahn's copies; the application saw them in
    onSessionOpen.  The places admission took stay held until the close.
    """
    seen_in_open: list[object] = []

    class Reader(SecureServerProtocol):
        def onSessionOpen(self) -> None:
            seen_in_open.append(self.http_headers)

    alice = Principal("alice", "fixed")
    authenticator = FixedAuthenticator(alice)
    factory = make_factory(clock, authenticator,
                           ratelimit={"sessions_per_principal": 1})
    factory.protocol = Reader
    proto, transport = handshake(factory, path=f"/ws?token={SECRET}",
                                 extra=(f"X-Secret: {SECRET}",))
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    assert isinstance(seen_in_open[0], dict)
    for name in HANDSHAKE_STATE:
        assert getattr(proto, name) is None, name
    authenticator.requests.clear()  # what it was asked is its own record
    own = {id(proto), id(vars(proto)), id(transport)}
    shared = {id(obj) for obj in _reachable([factory, clock], own)}
    held = [obj for obj in _reachable([vars(proto)], shared)
            if isinstance(obj, str | bytes) and SECRET.encode() in (
                obj if isinstance(obj, bytes) else obj.encode("utf-8", "replace"))]
    assert held == []
    second, transport2 = connect(factory, "198.51.100.9")
    second.dataReceived(request())
    assert status(transport2) == 429  # alice's place is still held
    proto.connectionLost(connectionDone)
    third, transport3 = connect(factory, "198.51.100.10")
    third.dataReceived(request())
    assert transport3.value().startswith(b"HTTP/1.1 101 ")
