"""
The public testing fakes (:mod:`securews.testing`) do what they say, on
real applications.
"""

from __future__ import annotations

import runpy

from twisted.internet.defer import Deferred

from securews.apps.echo import EchoProtocol
from securews.auth.interfaces import AuthenticationFailed, Principal
from securews.testing import (
    FixedAuthenticator,
    MemorySession,
    client_frame,
    memory_policy,
    read_frames,
    upgrade_request,
)
from securews.wire.protocol import SecureServerProtocol
from tests.support.paths import EXAMPLES, REPO


class Greeter(SecureServerProtocol):
    subprotocols = ("greet.v1",)

    def onSessionOpen(self) -> None:
        assert self.principal is not None
        self.sendMessage(f"hello {self.principal.id}".encode())


def test_a_session_opens_and_echoes() -> None:
    session = MemorySession.open(EchoProtocol)
    assert session.status == 101
    session.send("hi")
    session.send(b"\x00\x01")
    assert session.received() == ["hi", b"\x00\x01"]


def test_the_principal_reaches_the_application() -> None:
    session = MemorySession.open(Greeter, principal=Principal("alice", "fixed"))
    assert session.received() == ["hello alice"]
    assert session.protocol.principal == Principal("alice", "fixed")


def test_time_runs_on_the_session_clock() -> None:
    """A client that never answers pings is dropped once ping_timeout passes."""
    session = MemorySession.open(EchoProtocol,
                                 limits={"ping_interval": 5, "ping_timeout": 2})
    session.clock.advance(5)
    assert [f.opcode for f in session.frames()] == [0x9]
    assert not session.disconnected
    session.clock.advance(2)
    assert session.disconnected


def test_refusals_are_observable() -> None:
    policy = memory_policy(authenticator=FixedAuthenticator(
        AuthenticationFailed("expired", "fixed")))
    session = MemorySession.open(EchoProtocol, policy=policy)
    assert session.status == 401
    assert session.response is not None
    assert session.response.header("Cache-Control") == ["no-store"]
    assert session.received() == []
    foreign = MemorySession.open(
        EchoProtocol, request=upgrade_request(origin="https://evil.example"))
    assert foreign.status == 403


def test_an_authenticator_that_answers_later() -> None:
    answer: Deferred[Principal | None] = Deferred()
    policy = memory_policy(authenticator=FixedAuthenticator(answer))
    session = MemorySession.open(Greeter, policy=policy)
    assert session.status is None
    answer.callback(Principal("bob", "fixed"))
    assert session.status == 101
    assert session.received() == ["hello bob"]


def test_a_close_handshake() -> None:
    session = MemorySession.open(EchoProtocol)
    session.close(1000)
    assert session.close_code == 1000
    assert session.disconnected


def test_frames_round_trip() -> None:
    frame = client_frame(b"x" * 70_000, 0x2, mask=None)
    frames, rest = read_frames(frame)
    assert rest == b""
    assert [(f.opcode, len(f.payload), f.fin) for f in frames] == [(0x2, 70_000, True)]


def test_a_message_over_the_limit_is_closed_1009() -> None:
    session = MemorySession.open(EchoProtocol, limits={"max_message_size": 10,
                                                       "max_frame_size": 10})
    session.send("x" * 11)
    assert session.close_code == 1009
    assert session.received() == []


def test_the_readme_example_runs_as_written() -> None:
    """README's "Testing an application" example, run on the embedding
    example's application."""
    greeter = runpy.run_path(str(EXAMPLES / "embed.py"))["Greeter"]
    text = (REPO / "README.rst").read_text("utf-8")
    section = text.split("Testing an application\n", 1)[1]
    block = section.split("::\n\n", 1)[1].split("\n\n``", 1)[0]
    code = "\n".join(line[4:] for line in block.splitlines())
    namespace: dict[str, object] = {"Greeter": greeter}
    exec(compile(code, "README.rst", "exec"), namespace)
    test = namespace["test_greeter"]
    assert callable(test)
    test()
