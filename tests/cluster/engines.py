"""Engines for the tests, on the session's real Redis (or one of their own)."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from securews.cluster.engine import Engine
from securews.rules.cluster import ClusterSettings
from tests.support.redis import RedisServer

_numbers = itertools.count()


def unique_prefix() -> str:
    """Keys of their own for each test on the shared server."""
    return f"t{next(_numbers)}:"


def make_engine(server: RedisServer, *, node: str = "node-a", prefix: str | None = None,
                url: str | None = None, **settings: Any) -> Engine:
    settings.setdefault("timeout", 1.0)
    settings.setdefault("lease", 2.0)
    return Engine(ClusterSettings(redis_url=url or server.url(),
                                  key_prefix=prefix or unique_prefix(), **settings),
                  reactor, node=node)


async def started(engine: Engine, timeout: float = 10) -> Engine:
    engine.start()
    d: Deferred[None] = engine.when_up()
    d.addTimeout(timeout, reactor)
    await d
    return engine
