"""The channels protocol's rules: requests, grants, recovery."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securews.rules.channels import (
    Grants,
    History,
    Invalid,
    Position,
    Publish,
    Subscribe,
    Unsubscribe,
    grants_of,
    message_frame,
    parse_request,
    recovery,
    reply_frame,
    valid_name,
)


@pytest.mark.parametrize(("document", "request_"), [
    ({"op": "subscribe", "channel": "news"}, Subscribe(None, "news")),
    ({"op": "subscribe", "channel": "news", "id": "a1",
      "since": {"epoch": "e1", "offset": 7}},
     Subscribe("a1", "news", Position("e1", 7))),
    ({"op": "unsubscribe", "channel": "user:alice", "id": 3},
     Unsubscribe(3, "user:alice")),
    ({"op": "publish", "channel": "chat:room-1", "data": {"text": "hé"}},
     Publish(None, "chat:room-1", '{"text":"hé"}')),
    ({"op": "publish", "channel": "c", "data": None}, Publish(None, "c", "null")),
])
def test_requests(document: object, request_: object) -> None:
    assert parse_request(document) == request_


@pytest.mark.parametrize(("document", "reason"), [
    ([], "not_an_object"),
    ({"op": "shout", "channel": "c"}, "bad_op"),
    ({"op": "subscribe"}, "bad_fields"),
    ({"op": "subscribe", "channel": "c", "extra": 1}, "bad_fields"),
    ({"op": "publish", "channel": "c"}, "bad_fields"),
    ({"op": "unsubscribe", "channel": "c", "data": 1}, "bad_fields"),
    ({"op": "subscribe", "channel": "has space"}, "bad_channel"),
    ({"op": "subscribe", "channel": "x" * 129}, "bad_channel"),
    ({"op": "subscribe", "channel": "news*"}, "bad_channel"),
    ({"op": "subscribe", "channel": "c", "id": True}, "bad_id"),
    ({"op": "subscribe", "channel": "c", "id": "i" * 65}, "bad_id"),
    ({"op": "subscribe", "channel": "c", "id": 2**60}, "bad_id"),
    ({"op": "subscribe", "channel": "c", "since": {"epoch": "e"}}, "bad_since"),
    ({"op": "subscribe", "channel": "c",
      "since": {"epoch": "e", "offset": -1}}, "bad_since"),
    ({"op": "subscribe", "channel": "c",
      "since": {"epoch": "e/1", "offset": 1}}, "bad_since"),
])
def test_what_is_not_the_protocol(document: object, reason: str) -> None:
    assert parse_request(document) == Invalid(reason)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=10)


@given(JSON)
def test_any_document_is_a_request_or_invalid(document: object) -> None:
    result = parse_request(document)
    assert isinstance(result, Subscribe | Unsubscribe | Publish | Invalid)
    if not isinstance(result, Invalid):
        assert valid_name(result.channel)


def test_grants_come_from_the_claim_with_the_principals_id() -> None:
    grants = grants_of({"channels": {"sub": ["news", "user:{sub}", "room-*"],
                                     "pub": ["chat:room-1"]}}, "alice")
    assert grants == Grants(("news", "user:alice", "room-*"), ("chat:room-1",))
    assert grants.may_subscribe("user:alice")
    assert not grants.may_subscribe("user:bob")
    assert grants.may_subscribe("room-42")
    assert not grants.may_publish("news")
    assert grants.may_publish("chat:room-1")


@pytest.mark.parametrize("claims", [
    {}, {"channels": "news"}, {"channels": {"sub": "news"}},
    {"channels": {"sub": [1, None, "bad pattern", "[abc]"]}},
])
def test_no_valid_claim_no_access(claims: dict[str, object]) -> None:
    grants = grants_of(claims, "alice")
    assert not grants.may_subscribe("news")
    assert not grants.may_subscribe("abc")


def test_an_id_that_is_no_channel_name_grants_nothing_through_sub() -> None:
    """A principal id with characters a name cannot hold (say "a b"):
    ``user:{sub}`` grants nothing, not a wider pattern."""
    grants = grants_of({"channels": {"sub": ["user:{sub}"]}}, "a*")
    assert grants.subscribe == ()


def test_recovery() -> None:
    history = History(Position("e", 5), ((3, "c"), (4, "d"), (5, "e")))
    assert recovery(Position("e", 2), history) == ((3, "c"), (4, "d"), (5, "e"))
    assert recovery(Position("e", 4), history) == ((5, "e"),)
    assert recovery(Position("e", 5), history) == ()
    assert recovery(Position("e", 1), history) is None  # offset 2 is gone
    assert recovery(Position("other", 2), history) is None
    assert recovery(Position("e", 9), history) is None
    assert recovery(Position("e", 2), History(Position("e", 5), history.entries,
                                              complete=False)) is None


def test_frames_are_json() -> None:
    frame = json.loads(message_frame("news", "e1", 7, '{"a":[1,2]}'))
    assert frame == {"channel": "news", "epoch": "e1", "offset": 7,
                     "data": {"a": [1, 2]}}
    assert json.loads(reply_frame("x", error="forbidden")) == {
        "id": "x", "error": "forbidden"}
