"""
The policy layer: one server's settings, limiters, stores,
authenticators and records (:class:`Policy`, built once by
:func:`build_policy`), and the run of admission for each connection
(:class:`Admission`).  Below the wire layer, above the backends: nothing
here knows Autobahn.
"""

from securews.policy._admission import WAIT, Admission, Connection
from securews.policy._policy import Policy, Shared, build_policy

__all__ = ["WAIT", "Admission", "Connection", "Policy", "Shared", "build_policy"]
