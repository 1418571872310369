"""
securews/wire/_autobahn.py: every Autobahn internal securews relies on is
listed, checked at import, really called by the Autobahn installed, and
touched nowhere else.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from securews.auth.anonymous import AnonymousAuthenticator
from securews.wire import _autobahn
from securews.wire._handshake import HandshakeProtocol
from securews.wire._session import SessionProtocol
from securews.wire._traffic import TrafficProtocol
from tests.support.memory import client_frame, connect, handshake, make_factory, request
from tests.support.paths import REPO

ALL = {**_autobahn.OVERRIDDEN, **_autobahn.SERVER_OVERRIDDEN}


def test_the_installed_autobahn_has_every_listed_internal() -> None:
    """The import-time check passed (securews imported): nothing to add."""
    _autobahn._check()


def test_a_renamed_method_stops_the_import_naming_it(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_autobahn.OVERRIDDEN, "_protocolViolation",
                        (("reason",), "1002 and stop reading"))
    with pytest.raises(ImportError, match=r"_protocolViolation is gone \(1002"):
        _autobahn._check()


def test_changed_parameters_stop_the_import_naming_them(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_autobahn.OVERRIDDEN, "_fail_connection",
                        (("status", "why"), "fixed close reasons"))
    with pytest.raises(ImportError, match=r"_fail_connection now takes"):
        _autobahn._check()


def test_an_attribute_autobahn_no_longer_sets_stops_the_import(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_autobahn.STATE, "message_payload_so_far", "renamed")
    with pytest.raises(ImportError, match=r"message_payload_so_far is no longer"):
        _autobahn._check()


def test_an_autobahn_outside_the_verified_range_stops_the_import(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_autobahn, "VERIFIED", ((99,), (100,)))
    with pytest.raises(ImportError, match=r"outside the verified range"):
        _autobahn._check()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Every listed method, spied on where securews's code path goes through
    it: securews's own override when it has one, else Autobahn's."""
    counted = dict.fromkeys(ALL, 0)
    for name in ALL:
        owner: type[Any]
        if name in vars(TrafficProtocol):
            owner = TrafficProtocol
        elif name in vars(SessionProtocol):
            owner = SessionProtocol
        elif name in vars(HandshakeProtocol):
            owner = HandshakeProtocol
        else:
            owner = next(k for k in WebSocketServerProtocol.__mro__
                         if name in vars(k))
        original = vars(owner)[name]

        def spy(self: Any, *args: Any, __name: str = name,
                __original: Any = original, **kwargs: Any) -> Any:
            counted[__name] += 1
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    return counted


def masked(payload: bytes, opcode: int, first: int | None = None) -> bytes:
    head = first if first is not None else 0x80 | opcode
    return struct.pack("!BB", head, 0x80 | len(payload)) + b"\0\0\0\0" + payload


def test_every_listed_override_is_really_called(
    clock: Clock, calls: dict[str, int]
) -> None:
    """
    Sessions that open, exchange messages and pings, break the protocol,
    send an invalid close reason, exceed the size limits, close and are
    refused: each override securews relies on runs.  A rename in Autobahn
    leaves one at zero and fails here.
    """
    def session(**sections: Any) -> tuple[Any, Any]:
        factory = make_factory(clock, AnonymousAuthenticator(), dev=True, **sections)
        proto, transport = handshake(factory)
        assert transport.value().startswith(b"HTTP/1.1 101 ")
        return proto, transport

    proto, _ = session()
    proto.dataReceived(client_frame(b"hello") + client_frame(b"p", opcode=0x9))
    proto.dataReceived(masked(struct.pack("!H", 1000), 0x8))  # client close
    proto, _ = session()
    proto.dataReceived(masked(b"x", 0x1, first=0xF1))  # reserved bits: 1002
    proto, _ = session()
    proto.dataReceived(masked(struct.pack("!H", 1000) + b"\xff", 0x8))  # 1007
    proto, _ = session(limits={"max_frame_size": 16, "max_message_size": 16})
    proto.dataReceived(client_frame(b"x" * 20))  # 1009
    clock.advance(3)  # the close timer reaps them
    factory = make_factory(clock, AnonymousAuthenticator(), dev=True)
    proto, transport = connect(factory)
    proto.dataReceived(request().replace(b"Version: 13", b"Version: 12"))
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    proto.connectionLost(Failure(ConnectionDone()))
    assert {name for name, count in calls.items() if count == 0} == set()


#: Autobahn private names securews uses (methods and state).
PRIVATE = {name for name in (*ALL, *_autobahn.STATE, *_autobahn.DEFLATE_STATE)
           if name.startswith("_") and not name.startswith("__")}
#: The classes that override Autobahn's (their own ``self.`` is theirs).
SUBCLASSES = {"securews/wire/_session.py", "securews/wire/_traffic.py",
              "securews/wire/_handshake.py", "securews/wire/deflate.py",
              "securews/wire/deflate_offer.py"}


def test_no_other_code_touches_autobahn_internals() -> None:
    """Outside the fence, Autobahn's private names appear only as the
    subclasses' own ``self.`` members (and ``super()`` calls, or calls of
    the base ``WebSocketProtocol``'s method past the server class's)."""
    pattern = re.compile(r"(\w+(?:\(\))?)\.(" + "|".join(sorted(PRIVATE)) + r")\b")
    offenders = []
    for path in (REPO / "securews").rglob("*.py"):
        where = str(path.relative_to(REPO))
        if where == "securews/wire/_autobahn.py":
            continue
        for match in pattern.finditer(path.read_text()):
            if where in SUBCLASSES and match.group(1) in ("self", "super()",
                                                            "WebSocketProtocol"):
                continue
            offenders.append(f"{where}: {match.group(0)}")
    assert offenders == []
