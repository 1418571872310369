"""
Several nodes acting as one through a shared engine (Redis or Valkey):
the engine client (:mod:`securews.cluster.engine`) and the engine's
implementations of the shared-state interfaces (tickets, rates, places,
revocations).  Assembled by :mod:`securews.service` when
``cluster.redis_url`` is set.
"""
