"""
A connection's objects are freed the moment it ends, by reference
counting, not left for the cyclic garbage collector.

Bare Autobahn keeps every connection alive after its close through one
cycle (``is_closed`` fires with the protocol as its result), and
securews added two (admission and the connection, the write gate and the
session): each connection's protocol, transport, TLS state, principal
and claims then waited for a collection, about 30 objects a connection.
Each test drives a real securews protocol in memory with the collector
switched off and checks that nothing of the connection survives it.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock

from securews.auth.interfaces import Principal
from securews.wire.backpressure import WriteGate
from tests.support.memory import (
    FixedAuthenticator,
    client_frame,
    handshake,
    make_factory,
    result_of,
)

ALICE = Principal("alice", "fixed", claims={"sub": "alice"})


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _watch(proto: Any) -> list[weakref.ref[Any]]:
    """Weak references to the protocol and what a connection is made of."""
    watched = [proto, proto.transport]
    if proto._admission is not None:
        watched.append(proto._admission)
    return [weakref.ref(obj) for obj in watched]


def _survivors(refs: list[weakref.ref[Any]]) -> list[str]:
    return [type(obj).__name__ for ref in refs if (obj := ref()) is not None]


def _open_and_close(clock: Clock, factory: Any,
                    end: Callable[[Any, Any], None]) -> list[weakref.ref[Any]]:
    proto, transport = handshake(factory)
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    refs = _watch(proto)
    end(proto, transport)
    clock.advance(60)
    return refs


@pytest.mark.usefixtures("collector_off")
@pytest.mark.parametrize("ending", ["client_close", "lost", "server_close"])
def test_an_ended_session_is_freed_without_the_cyclic_collector(
        clock: Clock, ending: str) -> None:
    factory = make_factory(clock, FixedAuthenticator(ALICE))

    def end(proto: Any, transport: Any) -> None:
        if ending == "client_close":
            proto.dataReceived(client_frame(b"\x03\xe8", opcode=0x8))
        elif ending == "server_close":
            proto.sendClose(1000)
            proto.dataReceived(client_frame(b"\x03\xe8", opcode=0x8))
        proto.connectionLost(connectionDone)

    refs = _open_and_close(clock, factory, end)
    assert factory.calls[-1][0] == "close"
    assert _survivors(refs) == []


@pytest.mark.usefixtures("collector_off")
def test_a_refused_handshake_is_freed_without_the_cyclic_collector(
        clock: Clock) -> None:
    factory = make_factory(clock, FixedAuthenticator(ALICE))
    proto, transport = handshake(factory, origin="https://evil.example")
    assert transport.value().startswith(b"HTTP/1.1 403 ")
    refs = _watch(proto)
    proto.connectionLost(connectionDone)
    del proto, transport
    clock.advance(60)
    assert _survivors(refs) == []


@pytest.mark.usefixtures("collector_off")
def test_a_handshake_waiting_on_its_authenticator_is_freed_when_lost(
        clock: Clock) -> None:
    """The authenticator answers after the connection is gone: the run
    lets go of the connection at the close, the late answer changes
    nothing."""
    answer: Deferred[Principal | None] = Deferred()

    class Slow:
        method = "fixed"

        def authenticate(self, request: Any) -> Deferred[Principal | None]:
            return answer

    factory = make_factory(clock, FixedAuthenticator(ALICE))
    factory.policy.authenticator = Slow()
    proto, transport = handshake(factory)
    assert transport.value() == b""
    refs = _watch(proto)
    proto.connectionLost(connectionDone)
    del proto, transport
    answer.callback(ALICE)
    clock.advance(60)
    assert _survivors(refs) == []


def test_is_closed_fires_with_the_protocol_before_and_after_the_close(
        clock: Clock) -> None:
    """``is_closed`` taken before the close fires with the protocol; taken
    after it, it has fired with the protocol, as Autobahn's own would."""
    factory = make_factory(clock, FixedAuthenticator(ALICE))
    proto, _ = handshake(factory)
    seen: list[object] = []
    before = proto.is_closed
    before.addCallback(lambda result: seen.append(result) or result)
    assert seen == []
    proto.connectionLost(connectionDone)
    assert seen == [proto]
    after = proto.is_closed
    assert after.called
    assert result_of(after) is proto


def test_a_released_write_gate_no_longer_calls_its_session() -> None:
    """A transport may pause or resume its producer while it is torn
    down, after the session let go of the gate."""
    calls: list[str] = []

    class Session:
        def onWritePaused(self) -> None:
            calls.append("paused")

        def onWriteResumed(self) -> None:
            calls.append("resumed")

    gate = WriteGate(Session())
    gate.pauseProducing()
    gate.resumeProducing()
    gate.release()
    gate.pauseProducing()
    gate.resumeProducing()
    gate.stopProducing()
    assert calls == ["paused", "resumed"]
    assert gate.session is None


@pytest.mark.usefixtures("collector_off")
def test_a_channels_session_is_freed_without_the_cyclic_collector() -> None:
    """The built-in channels application: subscribed, published, closed."""
    import json

    from securews.apps.channels import ChannelsProtocol
    from securews.testing import (
        MemorySession,
        make_config,
        memory_policy,
        upgrade_request,
    )
    from securews.wire.factory import SecureServerFactory

    config = make_config(tls={"cert": "/c", "key": "/k"},
                         origin={"allowed": ["https://app.example"]},
                         server={"app": "channels"}, messages={"format": "json"})
    alice = Principal("alice", "fixed", {"channels": {"sub": ["news"],
                                                      "pub": ["news"]}})
    policy = memory_policy(config, clock=Clock(),
                           authenticator=FixedAuthenticator(alice))
    factory = SecureServerFactory(policy=policy, protocol=ChannelsProtocol,
                                  reactor=policy.clock)
    session = MemorySession(factory)
    session.write(upgrade_request("/ws"))
    assert session.status == 101
    session.send(json.dumps({"op": "subscribe", "channel": "news", "id": 1}))
    session.send(json.dumps({"op": "publish", "channel": "news", "data": 1, "id": 2}))
    assert len(session.received()) == 3
    refs = _watch(session.protocol)
    session.close()
    session.protocol.connectionLost(connectionDone)
    del session
    policy.clock.advance(60)
    assert _survivors(refs) == []


@pytest.mark.usefixtures("collector_off")
def test_a_connection_dropped_at_accept_is_freed_without_the_cyclic_collector(
        clock: Clock) -> None:
    """No connectionLost follows a drop at accept (the connect rate here):
    the protocol and its admission run let go of each other at once."""
    factory = make_factory(clock, FixedAuthenticator(ALICE),
                           ratelimit={"connect_rate": 1, "connect_burst": 1})
    first, _ = handshake(factory)
    assert first is not None
    built: list[weakref.ref[Any]] = []
    real = factory.protocol

    def watched() -> Any:
        proto = real()
        built.append(weakref.ref(proto))
        return proto

    factory.protocol = watched
    dropped, transport = handshake(factory)
    assert dropped is None
    assert transport.disconnecting
    assert len(built) == 1
    assert built[0]() is None


def test_channels_joined_after_the_close_are_closed_at_once(clock: Clock) -> None:
    """A late callback that joins channels after the close gets a closed
    membership: nothing it subscribes outlives the session."""
    alice = Principal("alice", "fixed", {"channels": {"sub": ["news"]}})
    factory = make_factory(clock, FixedAuthenticator(alice))
    proto, transport = handshake(factory)
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    proto.connectionLost(connectionDone)
    outcome: list[Any] = []
    proto.join_channels().subscribe("news").addBoth(outcome.append)
    assert len(outcome) == 1
    assert outcome[0].value.reason == "unavailable"
    assert len(proto.join_channels()) == 0
