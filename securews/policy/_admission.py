"""
Running :func:`securews.rules.admission.admission` for one connection.

:class:`Admission` steps the generator: it carries out the actions that
consult the policy (tokens, places, revocations, tickets) and hands the
others (reading, answering, upgrading, authenticating) to the connection.
An action answered by an already-fired Deferred (everything in memory)
goes on in the same call; one answered later resumes the run when it
fires.  Places are kept as leases and all given back by :meth:`close`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from securews.policy._policy import Policy
from securews.rules.actions import (
    FINAL,
    Action,
    Arrival,
    CheckRevoked,
    Claim,
    Claimed,
    Counter,
    Hold,
    IssueTicket,
    Refuse,
    Release,
    TakeToken,
    Unavailable,
    Vouch,
    Vouched,
)
from securews.rules.admission import admission
from securews.rules.counters import Lease
from securews.rules.head import Refusal

__all__ = ["WAIT", "Admission", "Connection"]

_log = Logger(namespace="securews.handshake")

#: What :meth:`Connection.carry_out` returns when it will call
#: :meth:`Admission.resume` itself later (or never: a final action).
WAIT: Final = object()
_LATER: Final = object()


def _lease(value: object) -> Lease:
    """A place a backend granted; anything but a Lease is its bug, and
    refused (never taken for a place: that would fail open)."""
    if not isinstance(value, Lease):
        raise TypeError(f"a place answered with a {type(value).__name__}")
    return value


def _give_back(lease: Lease) -> None:
    """Give a place back; one that cannot be given back (its engine is
    gone: its own lease will lapse there) never keeps the others."""
    try:
        lease.release()
    except Exception as e:
        _log.error("a place could not be given back ({error})",
                   event="release_failed", error=type(e).__name__)


class Connection(Protocol):
    """The side of a connection that admission's I/O actions need."""

    def carry_out(self, action: Action) -> object:
        """
        Do ``action`` (:class:`~securews.rules.admission.Settled`,
        ``ReadHead``, ``ReadBody``, ``Upgrade``, ``Authenticate`` or one of
        the final ones).

        :returns: its result, a Deferred of it, or :data:`WAIT`.
        """


class Admission:
    """
    One connection's admission, from accept to its final action.

    :param connection: who carries out the I/O actions; may be set later
        (:attr:`connection`), before :meth:`start`.
    """

    def __init__(self, policy: Policy, arrival: Arrival,
                 connection: Connection | None = None) -> None:
        self._policy = policy
        self._steps = admission(policy.rules, arrival)
        self.connection = connection
        self._leases: dict[Counter, Lease] = {}
        #: The action the run waits on, or ``None`` while it runs or once over.
        self.waiting: Action | None = None
        #: The final action carried out, once there is one.
        self.final: Action | None = None
        self._closed = False

    def start(self) -> None:
        """Run up to the first action that waits."""
        self._advance(None, None)

    def resume(self, value: object) -> None:
        """The connection's answer to the action it returned :data:`WAIT` for."""
        if self.waiting is not None and not self._closed:
            self.waiting = None
            self._advance(value, None)

    def settle(self) -> None:
        """
        The run ended in a session that stays open: the places it holds
        are kept (until :meth:`close`), the suspended generator's frame
        (the request head with its credential, every answer) goes, so an
        idle session does not carry it.
        """
        if self.final is not None:
            self._steps.close()

    def close(self) -> None:
        """The connection ended: every place is given back, and the run stops
        (an answer that arrives later is dropped, a place it brings given back).
        The connection is let go of, so that the two do not keep each other
        alive for the cyclic garbage collector to find."""
        self._closed = True
        self.connection = None
        self.waiting = None
        leases, self._leases = list(self._leases.values()), {}
        for lease in leases:
            _give_back(lease)
        self._steps.close()

    def _advance(self, value: object, error: BaseException | None) -> None:
        while not self._closed and self.final is None:
            try:
                if error is not None:
                    action = self._steps.throw(error)
                else:
                    action = self._steps.send(value)
            except StopIteration:
                return
            except Exception as e:
                _log.error("handshake check failed with {error}; refused",
                           event="handshake", error=type(e).__name__)
                action = Refuse(Refusal(500, "internal_error"))
            value, error = None, None
            if isinstance(action, FINAL):
                self.final = action
                self._connect().carry_out(action)
                return
            result = self._carry_out(action)
            if result is WAIT:
                self.waiting = action
                return
            if isinstance(result, Deferred):
                result = self._now_or_later(action, result)
                if result is _LATER:
                    self.waiting = action
                    return
            value, error = self._outcome(action, result)

    def _connect(self) -> Connection:
        assert self.connection is not None, "Admission.start() before a connection"
        return self.connection

    def _carry_out(self, action: Action) -> object:
        """The policy's answer (a backend that raises instead of failing
        its Deferred is a failure all the same), or the connection's."""
        policy = self._policy
        try:
            if isinstance(action, TakeToken):
                return policy.take(action.key)
            if isinstance(action, Hold):
                return policy.hold(action.counter, action.key)
            if isinstance(action, Claim):
                return policy.claim(action.key, action.rate)
            if isinstance(action, Vouch):
                return policy.vouch(action.principal)
            if isinstance(action, CheckRevoked):
                return policy.revoked(action.principal)
            if isinstance(action, IssueTicket):
                return policy.issue_ticket(action.principal, action.origin,
                                           action.client)
        except Exception:
            return Failure()
        if isinstance(action, Release):
            lease = self._leases.pop(action.counter, None)
            if lease is not None:
                _give_back(lease)
            return None
        return self._connect().carry_out(action)

    def _outcome(self, action: Action,
                 result: object) -> tuple[object, BaseException | None]:
        """What admission is sent (a value) or thrown (:exc:`Unavailable`:
        the backend failed, or answered with something it should not)."""
        if isinstance(result, Failure):
            return None, Unavailable()
        try:
            return self._kept(action, result), None
        except TypeError:
            return None, Unavailable()

    def _kept(self, action: Action, result: object) -> object:
        """A place becomes a lease held until :meth:`close`; admission is
        told only whether it got one (for :class:`Hold`), or sees the
        lease it is now the run's (for :class:`Claim`, :class:`Vouch`)."""
        if isinstance(action, Hold):
            if result is None:
                return False
            self._leases[action.counter] = _lease(result)
            return True
        if isinstance(action, Claim | Vouch):
            kind = Claimed if isinstance(action, Claim) else Vouched
            if not isinstance(result, kind):
                raise TypeError(f"{type(action).__name__} answered with a "
                                f"{type(result).__name__}")
            if result.lease is not None:
                self._leases["client" if kind is Claimed else "principal"] = (
                    _lease(result.lease))
        return result

    def _now_or_later(self, action: Action, d: Deferred[Any]) -> object:
        """
        ``d``'s result (a Failure for an error) if it has fired, else
        :data:`_LATER`: the run then resumes when it fires.
        """
        box: list[object] = []
        resume: Callable[[object], None] = box.append

        def arrived(outcome: object) -> None:
            resume(outcome)

        d.addBoth(arrived)
        if box:
            return box[0]

        def later(outcome: object) -> None:
            if self._closed or self.waiting is not action:
                lease = getattr(outcome, "lease", outcome)
                if isinstance(lease, Lease):
                    _give_back(lease)
                return
            self.waiting = None
            self._advance(*self._outcome(action, outcome))

        resume = later
        return _LATER
