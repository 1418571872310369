"""
Rates and places shared by every node, in the engine.

A count (connections of a client network, sessions of a principal) is
kept per node: each node's share lives under a lease the node renews
(:class:`LeaseBook`, written by :meth:`LeaseBook.renew` every third of
``cluster.lease``).  A node that crashes stops renewing; its share lapses
``lease`` seconds later, never before, and the places it held count no
more.  A renewal writes each share as the node really holds it, so a
give-back lost in an outage, or a share purged while the node could not
reach the engine, is corrected at the next renewal.

Each operation is one Lua script (:mod:`securews.cluster.scripts`); the
handshake's two checks (:class:`RedisGate`) are one round trip each.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from securews.cluster.engine import Engine
from securews.cluster.scripts import SCRIPTS
from securews.limits.interfaces import IGate, IRateLimiter, ISessionCounter, RateVerdict
from securews.rules.actions import Claimed, Vouched
from securews.rules.cluster import digest
from securews.rules.counters import Lease

__all__ = ["LeaseBook", "RedisGate", "RedisRateLimiter", "RedisSessionCounter",
           "Renewed"]

#: (count key, leases key): one count in the engine.
Pair = tuple[str, str]
#: Counts renewed per script call at most.
RENEW_BATCH = 200


class LeaseBook:
    """
    The places this node holds in the engine, by count: the truth its
    renewals write.

    A place is recorded as soon as it is asked for (so a renewal running
    meanwhile counts it: never under-counting) and forgotten when it is
    refused or given back; a count that drops to zero is written once
    more, as zero, then forgotten.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.held: dict[Pair, int] = {}
        self._emptied: set[Pair] = set()

    def __len__(self) -> int:
        return sum(self.held.values())

    def add(self, pair: Pair) -> None:
        self.held[pair] = self.held.get(pair, 0) + 1
        self._emptied.discard(pair)

    def remove(self, pair: Pair) -> None:
        left = self.held.get(pair, 0) - 1
        if left > 0:
            self.held[pair] = left
        else:
            self.held.pop(pair, None)
            self._emptied.add(pair)

    def renew(self, *, recovering: bool = False) -> Deferred[Renewed]:
        """
        Write every share this node holds and extend its lease, a batch
        at a time, each batch's counts read when it is sent (a place taken
        meanwhile is in them: never written back as it was before).
        """
        pairs = [*self.held, *self._emptied]
        written = set(self._emptied)
        batches = [pairs[i:i + RENEW_BATCH]
                   for i in range(0, len(pairs), RENEW_BATCH)] or [[]]
        engine = self.engine
        keys = engine.keys
        lease_ms = int(engine.settings.lease * 1000)
        d: Deferred[Any] = Deferred()
        d.callback(None)

        def write(previous: object, batch: list[Pair]) -> Deferred[Any] | object:
            if isinstance(previous, Renewed) and previous.owner is not None:
                return previous  # another process holds this node id: stop
            counts = [self.held.get(pair, 0) for pair in batch]
            names = [keys.epoch, keys.node(engine.node),
                     *(k for pair in batch for k in pair)]
            args = [engine.time_arg(), engine.node, lease_ms, engine.instance, *counts]
            return engine.script(SCRIPTS["renew"], names, args,
                                 recovering=recovering).addCallback(_renewed)

        for batch in batches:
            d.addCallback(write, batch)

        def written_out(renewed: Renewed) -> Renewed:
            if renewed.owner is None:
                self._emptied -= written
            return renewed

        return d.addCallback(written_out)


@attrs.frozen
class Renewed:
    """
    :ivar epoch: the engine's epoch, as the renewal saw it.
    :ivar owner: another process registered under this node id (nothing
        was written then).
    """

    epoch: str | None
    owner: str | None = None


def _renewed(reply: list[Any]) -> Renewed:
    epoch, owner = reply[0], reply[1] if len(reply) > 1 else None
    return Renewed(None if epoch is None else _text(epoch),
                   None if owner is None else _text(owner))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _place(book: LeaseBook, pair: Pair) -> Lease:
    engine = book.engine

    def give_back() -> None:
        book.remove(pair)
        d = engine.script(SCRIPTS["place_release"], pair,
                          [engine.time_arg(), engine.node])
        # Lost (the engine is down): the next renewal writes the truth.
        d.addErrback(lambda _: None)

    return Lease(give_back)


@implementer(ISessionCounter)
class RedisSessionCounter:
    """
    Places per key across the nodes.

    :param kind: ``"network"`` or ``"principal"`` (principal ids are kept
        as digests).
    """

    def __init__(self, book: LeaseBook, kind: str, limit: int) -> None:
        self.book = book
        self.kind = kind
        self.limit = limit

    def _pair(self, key: str) -> Pair:
        keys = self.book.engine.keys
        name = digest(key) if self.kind == "principal" else key
        return keys.count(self.kind, name), keys.leases(self.kind, name)

    def acquire(self, key: str) -> Deferred[Lease | None]:
        return acquire(self.book, self._pair(key), self.limit)

    def count(self, key: str) -> Deferred[int]:
        engine = self.book.engine
        d: Deferred[int] = engine.script(SCRIPTS["place_count"], self._pair(key),
                                         [engine.time_arg()])
        return d.addCallback(int)


def acquire(book: LeaseBook, pair: Pair, limit: int) -> Deferred[Lease | None]:
    """One place in ``pair`` for this node, if fewer than ``limit`` are held."""
    engine = book.engine
    book.add(pair)
    d = engine.script(SCRIPTS["place_acquire"], pair,
                      [engine.time_arg(), engine.node, limit,
                       int(engine.settings.lease * 1000)])

    def answered(placed: int) -> Lease | None:
        if int(placed) == 1:
            return _place(book, pair)
        book.remove(pair)
        return None

    def failed(failure: Failure) -> Failure:
        book.remove(pair)
        return failure

    return d.addCallbacks(answered, failed)


@implementer(IRateLimiter)
class RedisRateLimiter:
    """A connect rate per client network across the nodes (GCRA: a token
    bucket in one timestamp)."""

    def __init__(self, engine: Engine, rate: float, burst: int) -> None:
        self.engine = engine
        self.rate = rate
        self.burst = burst

    def take(self, key: str) -> Deferred[RateVerdict]:
        engine = self.engine
        d: Deferred[Any] = engine.script(
            SCRIPTS["rate_take"], [engine.keys.rate(key)],
            [engine.time_arg(), 1000.0 / self.rate, self.burst])
        return d.addCallback(_verdict)


def _verdict(wait: int) -> RateVerdict:
    wait = int(wait)
    return RateVerdict(True) if wait < 0 else RateVerdict(False, wait / 1000)


@implementer(IGate)
class RedisGate:
    """
    The handshake's two shared checks, one script each.

    :param rate: the connect rate (per second) and ``burst`` across the
        nodes, taken by :meth:`claim` when asked to.
    """

    def __init__(self, book: LeaseBook, *, per_client: int, per_principal: int,
                 rate: float, burst: int) -> None:
        self.book = book
        self.per_client = per_client
        self.per_principal = per_principal
        self.rate = rate
        self.burst = burst

    def claim(self, key: str, rate: bool) -> Deferred[Claimed]:
        book, engine = self.book, self.book.engine
        keys = engine.keys
        pair = keys.count("network", key), keys.leases("network", key)
        book.add(pair)
        d: Deferred[Any] = engine.script(
            SCRIPTS["claim"], [keys.rate(key), *pair],
            [engine.time_arg(), engine.node, self.per_client,
             int(engine.settings.lease * 1000), "1" if rate else "0",
             1000.0 / self.rate, self.burst])

        def answered(reply: list[Any]) -> Claimed:
            wait, placed = (int(v) for v in reply)
            if placed == 1:
                return Claimed(_place(book, pair))
            book.remove(pair)
            return Claimed(None, wait / 1000 if wait >= 0 else None)

        return d.addCallbacks(answered, _forget(book, pair))

    def vouch(self, principal: str, jti: str | None,
              issued_at: float | None) -> Deferred[Vouched]:
        book, engine = self.book, self.book.engine
        keys = engine.keys
        who = digest(principal)
        pair = keys.count("principal", who), keys.leases("principal", who)
        book.add(pair)
        d: Deferred[Any] = engine.script(
            SCRIPTS["vouch"],
            [keys.revoked_principal(who), keys.revoked_token(digest(jti or "")),
             *pair],
            [engine.time_arg(), engine.node, self.per_principal,
             int(engine.settings.lease * 1000),
             "" if issued_at is None else int(issued_at * 1000),
             "1" if jti is not None else "0"])

        def answered(reply: list[Any]) -> Vouched:
            revoked, placed = (int(v) for v in reply)
            if placed == 1:
                return Vouched(False, _place(book, pair))
            book.remove(pair)
            return Vouched(revoked == 1, None)

        return d.addCallbacks(answered, _forget(book, pair))


def _forget(book: LeaseBook, pair: Pair) -> Any:
    def failed(failure: Failure) -> Failure:
        book.remove(pair)
        return failure

    return failed
