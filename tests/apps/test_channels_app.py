"""
The built-in ``channels`` application, in memory: sessions subscribe,
publish and recover through one node's broker.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from securews.apps.channels import ChannelsProtocol
from securews.auth.interfaces import HandshakeRequest, IAuthenticator, Principal
from securews.rules.config import ConfigError
from securews.testing import MemorySession, make_config, memory_policy, upgrade_request
from securews.wire.factory import SecureServerFactory

CLAIMS = {
    "alice": {"channels": {"sub": ["news", "user:{sub}", "chat:*"],
                           "pub": ["chat:*"]}},
    "bob": {"channels": {"sub": ["news", "chat:*"], "pub": ["news", "chat:*"]}},
    "mallory": {},
}


@implementer(IAuthenticator)
class AsUser:
    """``?as=NAME``: that user, with the claims above."""

    method = "fixed"

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        name = parse_qs(request.head.query).get("as", ["mallory"])[0]
        return succeed(Principal(name, "fixed", CLAIMS.get(name, {})))


@pytest.fixture
def factory() -> SecureServerFactory:
    config = make_config(tls={"cert": "/c", "key": "/k"},
                         origin={"allowed": ["https://app.example"]},
                         server={"app": "channels"}, messages={"format": "json"},
                         channels={"history_size": 5, "max_subscriptions": 3,
                                   "max_violations": 3})
    policy = memory_policy(config, clock=Clock(), authenticator=AsUser())
    return SecureServerFactory(policy=policy, protocol=ChannelsProtocol,
                               reactor=policy.clock)


def session(factory: SecureServerFactory, user: str) -> MemorySession:
    s = MemorySession(factory)
    s.write(upgrade_request(f"/ws?as={user}"))
    assert s.status == 101
    return s


def send(s: MemorySession, **request: Any) -> None:
    s.send(json.dumps(request))


def frames(s: MemorySession) -> list[dict[str, Any]]:
    return [json.loads(m) for m in s.received()]


def test_a_published_message_reaches_every_subscriber(
    factory: SecureServerFactory
) -> None:
    alice, bob = session(factory, "alice"), session(factory, "bob")
    send(alice, op="subscribe", channel="news", id=1)
    send(bob, op="subscribe", channel="news", id="b1")
    send(bob, op="publish", channel="news", data={"headline": "hi"}, id="b2")
    got = frames(alice)
    assert got[0]["id"] == 1
    assert got[0]["ok"] is True
    epoch = got[0]["epoch"]
    assert got[1] == {"channel": "news", "epoch": epoch, "offset": 1,
                      "data": {"headline": "hi"}}
    assert frames(bob)[1:] == [
        {"id": "b2", "ok": True, "channel": "news", "epoch": epoch, "offset": 1},
        {"channel": "news", "epoch": epoch, "offset": 1, "data": {"headline": "hi"}},
    ] or frames(bob)[1:] == [
        {"channel": "news", "epoch": epoch, "offset": 1, "data": {"headline": "hi"}},
        {"id": "b2", "ok": True, "channel": "news", "epoch": epoch, "offset": 1},
    ]


def test_a_subscriber_back_since_its_position_gets_exactly_what_it_missed(
    factory: SecureServerFactory
) -> None:
    alice, bob = session(factory, "alice"), session(factory, "bob")
    send(alice, op="subscribe", channel="chat:1")
    send(bob, op="publish", channel="chat:1", data=1)
    last = frames(alice)[-1]
    alice.close()
    for n in range(2, 5):
        send(bob, op="publish", channel="chat:1", data=n)
    again = session(factory, "alice")
    send(again, op="subscribe", channel="chat:1", id="r",
         since={"epoch": last["epoch"], "offset": last["offset"]})
    got = frames(again)
    assert got[0]["recovered"] is True
    assert [f["data"] for f in got[1:]] == [2, 3, 4]
    send(bob, op="publish", channel="chat:1", data=5)
    assert frames(again)[-1]["data"] == 5


def test_beyond_the_history_it_is_told_recovered_false(
    factory: SecureServerFactory
) -> None:
    alice, bob = session(factory, "alice"), session(factory, "bob")
    send(alice, op="subscribe", channel="chat:2")
    send(bob, op="publish", channel="chat:2", data=0)
    last = frames(alice)[-1]
    for n in range(1, 10):  # history_size is 5
        send(bob, op="publish", channel="chat:2", data=n)
    again = session(factory, "alice")
    send(again, op="subscribe", channel="chat:2", id="r",
         since={"epoch": last["epoch"], "offset": last["offset"]})
    got = frames(again)
    assert got[0]["recovered"] is False
    assert got[1] == {"channel": "chat:2", "epoch": last["epoch"], "offset": 10,
                      "recovered": False}
    assert len(got) == 2


def test_no_claim_no_access_and_repeated_violations_close(
    factory: SecureServerFactory
) -> None:
    mallory = session(factory, "mallory")
    send(mallory, op="subscribe", channel="news", id=1)
    send(mallory, op="publish", channel="news", data="x", id=2)
    assert frames(mallory) == [{"id": 1, "error": "forbidden"},
                               {"id": 2, "error": "forbidden"}]
    assert mallory.close_code is None
    send(mallory, op="subscribe", channel="user:alice", id=3)
    assert mallory.close_code == 1008


def test_a_principal_cannot_read_anothers_own_channel(
    factory: SecureServerFactory
) -> None:
    bob = session(factory, "bob")
    send(bob, op="subscribe", channel="user:alice", id=1)
    assert frames(bob) == [{"id": 1, "error": "forbidden"}]


def test_subscriptions_per_session_are_capped(factory: SecureServerFactory) -> None:
    alice = session(factory, "alice")
    for n in range(3):
        send(alice, op="subscribe", channel=f"chat:{n}", id=n)
    send(alice, op="subscribe", channel="chat:9", id=9)
    assert frames(alice)[-1] == {"id": 9, "error": "too_many_subscriptions"}
    send(alice, op="unsubscribe", channel="chat:0", id="u")
    send(alice, op="subscribe", channel="chat:9", id=10)
    assert frames(alice)[-1]["ok"] is True


@pytest.mark.parametrize("message", [
    '{"op": "subscribe", "channel": "news", "mode": "fast"}',
    '{"op": "subscribe", "channel": "bad name"}',
    '{"op": "dance"}',
    '[1, 2]',
])
def test_what_is_not_the_protocol_closes_1007(
    factory: SecureServerFactory, message: str
) -> None:
    alice = session(factory, "alice")
    alice.send(message)
    assert alice.close_code == 1007


def test_binary_closes_1003(factory: SecureServerFactory) -> None:
    alice = session(factory, "alice")
    alice.send(b"\x00")
    assert alice.close_code == 1003


def test_unsubscribing_from_what_one_is_not_subscribed_to(
    factory: SecureServerFactory
) -> None:
    alice = session(factory, "alice")
    send(alice, op="unsubscribe", channel="news", id=1)
    assert frames(alice) == [{"id": 1, "error": "not_subscribed"}]


def test_the_channels_app_needs_json_messages() -> None:
    with pytest.raises(ConfigError, match=r"messages\.format"):
        make_config(tls={"cert": "/c", "key": "/k"}, server={"app": "channels"})
