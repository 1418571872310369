"""
Embedding securews in a plain Twisted program.

Run:  SECUREWS_TOKEN=s3cret python examples/embed.py CERT KEY PORT

then, for example,
``securews client wss://127.0.0.1:PORT/greet --cafile CERT --token s3cret``.

The application is a SecureServerProtocol subclass; authentication is an
IAuthenticator (here: one shared bearer token, compared in constant
time); the TLS context is securews's own, built from the same settings.
README.rst shows this file from its imports on, and
tests/test_readme.py checks that it still does.
"""

from __future__ import annotations

import hmac
import os
import sys

from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogBeginner
from twisted.python.failure import Failure
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


def main(cert: str, key: str, port: str, token: str) -> None:
    factory = securews.SecureServerFactory(
        protocol=Greeter,
        authenticator=SharedTokenAuthenticator(token),
        reactor=reactor,
        server={"path": "/greet"},
        tls={"cert": cert, "key": key},
        # Browsers from this origin; programs (no Origin header) too.
        origin={"allowed": ["https://app.example.com"], "allow_missing": True},
    )
    listening = securews.listening_factory(factory)  # reads and checks [tls]
    # securews's log observer: INFO and up, text or JSON ([log] settings).
    globalLogBeginner.beginLoggingTo([make_observer(factory.config.log)])
    endpoint = endpoints.TCP4ServerEndpoint(reactor, int(port), interface="127.0.0.1")
    endpoint.listen(listening).addErrback(cannot_listen)
    reactor.run()


def cannot_listen(failure: Failure) -> None:
    print(f"embed.py: error: {failure.getErrorMessage()}", file=sys.__stderr__)
    reactor.stop()


if __name__ == "__main__":
    token = os.environ.get("SECUREWS_TOKEN", "")
    if len(sys.argv) != 4 or not token:
        sys.stderr.write("usage: SECUREWS_TOKEN=... python embed.py CERT KEY PORT\n")
        sys.exit(2)
    try:
        main(sys.argv[1], sys.argv[2], sys.argv[3], token)
    except securews.ConfigError as e:
        sys.stderr.write(f"embed.py: error: {e}\n")
        sys.exit(2)
