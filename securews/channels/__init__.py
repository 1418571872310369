"""
Channels: publish/subscribe with bounded history and recovery.  The
broker interface and its in-memory implementation live here, with what
a session does with them (:class:`~securews.channels.membership.Membership`);
the rules are :mod:`securews.rules.channels`, the Redis broker
:mod:`securews.cluster.broker`, the built-in application
:mod:`securews.apps.channels`.
"""

from securews.channels.interfaces import IBroker, Listener
from securews.channels.membership import Membership
from securews.channels.memory import MemoryBroker

__all__ = ["IBroker", "Listener", "Membership", "MemoryBroker"]
