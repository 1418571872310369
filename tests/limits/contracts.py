"""
One set of assertions for every implementation of the shared-state
interfaces (in memory now, Redis for a cluster): a subclass supplies the
implementation and a way to let time pass, and inherits the tests
(klein's ``GetValuesTestsMixIn`` and txacme's store tests do the same).

The tests are Deferred-based: an in-memory implementation answers at
once, a remote one later; both must give the same answers.
"""

from __future__ import annotations

import math
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from securews.auth.interfaces import ITicketStore, Principal, TicketRejected
from securews.limits.interfaces import (
    IGate,
    IRateLimiter,
    IRevocations,
    ISessionCounter,
    RateVerdict,
)
from securews.rules.actions import Claimed, Vouched

ALICE = Principal("alice", "cookie")
ORIGIN = "https://app.example.com"
IP, OTHER_IP = "203.0.113.5", "203.0.113.6"


async def refusal(d: Deferred[Any]) -> str:
    """The reason a Deferred fails with (a TicketRejected)."""
    try:
        await d
    except TicketRejected as e:
        return e.reason
    raise AssertionError("did not fail")


class Contract:
    """What every contract subclass provides."""

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for the implementation under test."""
        raise NotImplementedError


class SessionCounterContract(Contract):
    def make_counter(self, limit: int) -> ISessionCounter:
        raise NotImplementedError

    def test_provides_the_interface(self) -> None:
        assert verifyObject(ISessionCounter, self.make_counter(3))

    @pytest_twisted.ensureDeferred
    async def test_a_key_holds_at_most_limit_places(self) -> None:
        counter = self.make_counter(2)
        first, second = await counter.acquire("k"), await counter.acquire("k")
        assert first is not None
        assert second is not None
        assert await counter.acquire("k") is None
        assert await counter.count("k") == 2
        assert await counter.acquire("other") is not None

    @pytest_twisted.ensureDeferred
    async def test_a_released_place_can_be_taken_again_once(self) -> None:
        counter = self.make_counter(1)
        lease = await counter.acquire("k")
        assert lease is not None
        lease.release()
        lease.release()  # idempotent: the place is given back once
        assert await counter.count("k") == 0
        again = await counter.acquire("k")
        assert again is not None
        assert await counter.acquire("k") is None

    @pytest_twisted.ensureDeferred
    async def test_a_refusal_changes_nothing(self) -> None:
        counter = self.make_counter(1)
        assert await counter.acquire("k") is not None
        for _ in range(5):
            assert await counter.acquire("k") is None
        assert await counter.count("k") == 1


class RateLimiterContract(Contract):
    def make_limiter(self, rate: float, burst: int) -> IRateLimiter:
        raise NotImplementedError

    def test_provides_the_interface(self) -> None:
        assert verifyObject(IRateLimiter, self.make_limiter(1, 2))

    @pytest_twisted.ensureDeferred
    async def test_burst_then_refused_with_the_wait(self) -> None:
        limiter = self.make_limiter(2, 3)
        verdicts = [await limiter.take("k") for _ in range(4)]
        assert [v.admitted for v in verdicts] == [True, True, True, False]
        assert 0 < verdicts[-1].retry_after <= 0.5 + 1e-6
        assert (await limiter.take("other")).admitted

    @pytest_twisted.ensureDeferred
    async def test_the_rate_refills_the_bucket(self) -> None:
        limiter = self.make_limiter(10, 1)
        assert (await limiter.take("k")).admitted
        assert not (await limiter.take("k")).admitted
        await self.advance(0.15)
        verdict = await limiter.take("k")
        assert verdict == RateVerdict(True)


class RevocationsContract(Contract):
    def make_revocations(self) -> IRevocations:
        raise NotImplementedError

    def now(self) -> float:
        raise NotImplementedError

    def test_provides_the_interface(self) -> None:
        assert verifyObject(IRevocations, self.make_revocations())

    @pytest_twisted.ensureDeferred
    async def test_a_revoked_token_is_revoked_until_it_lapses(self) -> None:
        revocations = self.make_revocations()
        await revocations.revoke(jti="t1", until=self.now() + 0.5)
        assert await revocations.revoked("alice", "t1")
        assert not await revocations.revoked("alice", "t2")
        await self.advance(0.6)
        assert not await revocations.revoked("alice", "t1")

    @pytest_twisted.ensureDeferred
    async def test_a_revoked_principal_keeps_only_later_credentials(self) -> None:
        revocations = self.make_revocations()
        revoked_at = self.now()
        await revocations.revoke(principal="alice", until=revoked_at + 60)
        assert await revocations.revoked("alice")
        assert await revocations.revoked("alice", issued_at=revoked_at - 10)
        assert not await revocations.revoked("alice", issued_at=revoked_at + 1)
        assert not await revocations.revoked("bob")

    @pytest_twisted.ensureDeferred
    async def test_exactly_one_of_principal_and_token(self) -> None:
        revocations = self.make_revocations()
        for kwargs in ({}, {"principal": "a", "jti": "t"}):
            try:
                await revocations.revoke(until=self.now() + 1, **kwargs)
            except ValueError:
                continue
            raise AssertionError(f"revoke({kwargs}) was accepted")
        try:
            await revocations.revoke(jti="t", until=math.inf)
        except ValueError:
            return
        raise AssertionError("an endless revocation was accepted")


class GateContract(Contract):
    """The handshake's two shared checks (:class:`IGate`)."""

    def make_gate(self, *, per_client: int, per_principal: int, rate: float = 1.0,
                  burst: int = 1) -> tuple[IGate, IRevocations]:
        """A gate and the revocations it consults."""
        raise NotImplementedError

    def now(self) -> float:
        raise NotImplementedError

    def test_provides_the_interface(self) -> None:
        gate, _ = self.make_gate(per_client=1, per_principal=1)
        assert verifyObject(IGate, gate)

    @pytest_twisted.ensureDeferred
    async def test_a_claim_holds_one_of_the_network_places(self) -> None:
        gate, _ = self.make_gate(per_client=2, per_principal=1)
        first, second = await gate.claim("net", False), await gate.claim("net", False)
        assert first.lease is not None
        assert second.lease is not None
        third = await gate.claim("net", False)
        assert third == Claimed(None, None)
        first.lease.release()
        again = await gate.claim("net", False)
        assert again.lease is not None
        assert (await gate.claim("other", False)).lease is not None

    @pytest_twisted.ensureDeferred
    async def test_a_claim_over_the_rate_takes_no_place(self) -> None:
        gate, _ = self.make_gate(per_client=5, per_principal=1, rate=2, burst=2)
        claims = [await gate.claim("net", True) for _ in range(3)]
        assert [c.lease is not None for c in claims] == [True, True, False]
        refused = claims[-1]
        assert refused.retry_after is not None
        assert 0 < refused.retry_after <= 0.5 + 1e-6
        # The refused claim held nothing: without the rate, places remain.
        assert all([(await gate.claim("net", False)).lease for _ in range(3)])
        assert (await gate.claim("net", False)).lease is None

    @pytest_twisted.ensureDeferred
    async def test_a_vouch_holds_one_of_the_principal_places(self) -> None:
        gate, _ = self.make_gate(per_client=1, per_principal=1)
        first = await gate.vouch("alice", None, None)
        assert not first.revoked
        assert first.lease is not None
        assert await gate.vouch("alice", None, None) == Vouched(False, None)
        first.lease.release()
        assert (await gate.vouch("alice", None, None)).lease is not None

    @pytest_twisted.ensureDeferred
    async def test_a_revoked_credential_is_vouched_for_by_no_one(self) -> None:
        gate, revocations = self.make_gate(per_client=1, per_principal=3)
        now = self.now()
        await revocations.revoke(principal="alice", until=now + 60)
        await revocations.revoke(jti="t1", until=now + 60)
        assert await gate.vouch("alice", None, now - 5) == Vouched(True, None)
        assert await gate.vouch("bob", "t1", None) == Vouched(True, None)
        later = await gate.vouch("alice", None, now + 5)
        assert not later.revoked
        assert later.lease is not None
        # Refusals held nothing: bob still has all his places.
        assert all([(await gate.vouch("bob", None, None)).lease for _ in range(3)])


class TicketStoreContract(Contract):
    def make_store(self, *, ttl: float, max_outstanding: int,
                   bind_ip: bool = True) -> ITicketStore:
        raise NotImplementedError

    def test_provides_the_interface(self) -> None:
        assert verifyObject(ITicketStore, self.make_store(ttl=30, max_outstanding=5))

    @pytest_twisted.ensureDeferred
    async def test_a_ticket_is_spent_once_then_reused(self) -> None:
        store = self.make_store(ttl=30, max_outstanding=5)
        ticket = await store.issue(ALICE, ORIGIN, IP)
        assert (await store.redeem(ticket, ORIGIN, IP)).id == "alice"
        assert await refusal(store.redeem(ticket, ORIGIN, IP)) == "reused"

    @pytest_twisted.ensureDeferred
    async def test_unknown_expired_and_misbound_tickets_are_told_apart(self) -> None:
        store = self.make_store(ttl=0.3, max_outstanding=5)
        assert await refusal(store.redeem("x" * 43, ORIGIN, IP)) == "bad_ticket"
        wrong_origin = await store.issue(ALICE, ORIGIN, IP)
        assert await refusal(store.redeem(wrong_origin, "https://evil.example",
                                          IP)) == "wrong_origin"
        wrong_client = await store.issue(ALICE, ORIGIN, IP)
        assert await refusal(store.redeem(wrong_client, ORIGIN,
                                          OTHER_IP)) == "wrong_client"
        # A ticket tried from the wrong place is burnt.
        assert await refusal(store.redeem(wrong_client, ORIGIN, IP)) == "reused"
        late = await store.issue(ALICE, ORIGIN, IP)
        await self.advance(0.4)
        assert await refusal(store.redeem(late, ORIGIN, IP)) == "expired"

    @pytest_twisted.ensureDeferred
    async def test_a_principal_mints_at_most_max_outstanding_per_ttl(self) -> None:
        store = self.make_store(ttl=30, max_outstanding=2)
        first = await store.issue(ALICE, ORIGIN, IP)
        await store.issue(ALICE, ORIGIN, IP)
        await store.redeem(first, ORIGIN, IP)  # spending frees no place
        assert await refusal(store.issue(ALICE, ORIGIN, IP)) == "too_many"
        assert await store.issue(Principal("bob", "jwt"), ORIGIN, IP)

    @pytest_twisted.ensureDeferred
    async def test_the_principal_comes_back_whole(self) -> None:
        """Claims and expiry travel with the ticket (the session inherits them)."""
        store = self.make_store(ttl=30, max_outstanding=5)
        minter = Principal("alice", "jwt", {"role": "admin", "n": [1, 2]},
                           expires_at=self.now() + 100)
        ticket = await store.issue(minter, ORIGIN, IP)
        back = await store.redeem(ticket, ORIGIN, IP)
        assert (back.id, back.method, dict(back.claims), back.expires_at) == (
            "alice", "jwt", {"role": "admin", "n": [1, 2]}, minter.expires_at)
