"""
In memory, with a shared backend that answers later (as a cluster's
engine does): bytes that arrive while admission waits on it are not lost.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from securews.auth.interfaces import Principal
from securews.auth.tickets import InMemoryTicketStore, TicketAuthenticator, TicketBook
from securews.limits.gate import ComposedGate
from securews.limits.interfaces import IGate
from securews.limits.memory import MemoryRevocations, MemorySessionCounter
from securews.policy import Shared, build_policy
from securews.rules.actions import Claimed, Vouched
from securews.testing import ORIGIN, FixedAuthenticator, MemorySession, make_config
from securews.wire.factory import SecureServerFactory
from securews.wire.protocol import SecureServerProtocol


@implementer(IGate)
class LaterGate:
    """The in-memory gate, its answers held until :meth:`answer`."""

    def __init__(self, clock: Clock) -> None:
        self.inner = ComposedGate(per_client=MemorySessionCounter(5),
                                  per_principal=MemorySessionCounter(5),
                                  revocations=MemoryRevocations(clock))
        self.held: list[tuple[Deferred[object], Deferred[object]]] = []

    def _later(self, d: Deferred[object]) -> Deferred[object]:
        outer: Deferred[object] = Deferred()
        self.held.append((d, outer))
        return outer

    def claim(self, key: str, rate: bool) -> Deferred[Claimed]:
        return self._later(self.inner.claim(key, rate))  # type: ignore[return-value,arg-type]

    def vouch(self, principal: str, jti: str | None,
              issued_at: float | None) -> Deferred[Vouched]:
        return self._later(self.inner.vouch(principal, jti, issued_at))  # type: ignore[return-value,arg-type]

    def answer(self) -> None:
        inner, outer = self.held.pop(0)
        inner.addBoth(outer.callback)


def test_a_ticket_body_that_arrives_while_a_backend_answers_is_read() -> None:
    """
    The head of a ticket POST arrives, the shared gate is asked, and the
    body arrives before it answers: the request is whole and answered
    201, not left waiting for bytes already received (it was, until the
    cluster's engine answered in another reactor turn).
    """
    clock = Clock()
    gate = LaterGate(clock)
    store = InMemoryTicketStore(TicketBook(ttl=30, max_outstanding=5, bind_ip=True),
                                clock)
    config = make_config(tls={"cert": "/u/c", "key": "/u/k"},
                         origin={"allowed": [ORIGIN]})
    policy = build_policy(config, clock,
                          authenticator=TicketAuthenticator(store, clock=clock),
                          ticket_store=store,
                          ticket_issuer=FixedAuthenticator(Principal("amy", "jwt")),
                          shared=Shared(gate=gate))
    session = MemorySession(SecureServerFactory(policy=policy,
                                                protocol=SecureServerProtocol,
                                                reactor=clock))
    body = b'{"purpose": "chat"}'
    session.write(b"POST /tickets HTTP/1.1\r\nHost: ws.example\r\n"
                  b"Origin: " + ORIGIN.encode() + b"\r\n"
                  b"Content-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
    session.write(body)
    assert session.status is None
    gate.answer()
    assert session.status == 201
