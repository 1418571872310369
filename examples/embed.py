"""
Embedding securews in a plain Twisted program.

Run:  SECUREWS_TOKEN=... python examples/embed.py CERT KEY PORT

The application is a SecureServerProtocol subclass; authentication is an
IAuthenticator (here: one shared bearer token, compared in constant
time); the TLS context is securews's own, built from the same settings.
"""

from __future__ import annotations

import hmac
import os
import sys

from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogBeginner
from zope.interface import implementer

import securews
from securews.ops.logs import make_observer


class Greeter(securews.SecureServerProtocol):
    """Greets the authenticated user, then echoes in upper case."""

    def onSessionOpen(self) -> None:
        assert self.principal is not None
        self.sendMessage(f"hello {self.principal.id}".encode())

    def onValidatedMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload.upper(), isBinary)


@implementer(securews.IAuthenticator)
class SharedTokenAuthenticator:
    """Accepts ``Authorization: Bearer <token>`` for one shared token."""

    method = "shared-token"

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def authenticate(
        self, request: securews.HandshakeRequest
    ) -> Deferred[securews.Principal | None]:
        offered = (request.head.get("authorization") or "").encode("latin-1")
        if hmac.compare_digest(offered, self._expected):
            return succeed(securews.Principal(id="service", method=self.method))
        return succeed(None)


def main(cert: str, key: str, port: str) -> None:
    factory = securews.SecureServerFactory(
        protocol=Greeter,
        authenticator=SharedTokenAuthenticator(os.environ["SECUREWS_TOKEN"]),
        reactor=reactor,
        server={"path": "/greet"},
        tls={"cert": cert, "key": key},
        origin={"allowed": ["https://app.example.com"], "allow_missing": True},
    )
    globalLogBeginner.beginLoggingTo([make_observer(factory.config.log)])
    endpoint = endpoints.TCP4ServerEndpoint(reactor, int(port), interface="127.0.0.1")
    endpoint.listen(securews.listening_factory(factory))
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
