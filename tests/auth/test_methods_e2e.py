"""
Authentication end to end: real TLS on loopback, a ``websockets`` client,
an ``http.client`` caller for the ticket POST, authenticators built from
settings with real key files; and every log line of the run checked for
the credentials it saw.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from securews.ops.logs import make_observer
from securews.rules.settings import LogSettings
from securews.testing import make_config
from securews.wire.factory import SecureServerFactory
from tests.support.common import CertFiles, websocket_client_tls

ORIGIN = "https://app.example.com"
COOKIE_SECRET = b"c" * 48


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    """An RSA key pair for JWTs (public half on disk) and a cookie secret file."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "jwt-public.pem"
    public.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    secret = tmp_path / "cookie-secret"
    secret.write_bytes(COOKIE_SECRET)
    return {"private": private, "public": public, "secret": secret}


def jwt_for(keys: dict[str, Any], sub: str, lifetime: float = 300,
            **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": sub, "iat": now, "exp": now + lifetime, "iss": "https://idp",
               "aud": "securews", **claims}
    return jwt.encode(payload, keys["private"], algorithm="RS256")


def cookie_for(sub: str, lifetime: float = 300) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + lifetime},
                      COOKIE_SECRET, algorithm="HS256")


def factory_for(certs: CertFiles, keys: dict[str, Any]) -> SecureServerFactory:
    config = make_config(
        tls={"cert": str(certs.cert), "key": str(certs.key)},
        origin={"allowed": [ORIGIN]},
        auth={"methods": ["ticket", "jwt", "cookie"],
              "jwt": {"key_file": str(keys["public"]), "issuer": "https://idp",
                      "audience": "securews"},
              "cookie": {"secret_file": str(keys["secret"])}},
        ratelimit={"connect_burst": 1000},
    )
    return SecureServerFactory(config)


class Client:
    """Blocking calls, run in a thread while the reactor serves."""

    def __init__(self, certs: CertFiles, port: int) -> None:
        self.context = websocket_client_tls(certs.ca_cert)
        self.port = port

    def handshake(self, query: str = "", headers: dict[str, str] | None = None,
                  origin: str = ORIGIN) -> int | str:
        """101 as the echoed reply to 'hi', else the refusal status."""
        url = f"wss://127.0.0.1:{self.port}/ws{query}"
        try:
            with connect(url, ssl=self.context, origin=origin,  # type: ignore[arg-type]
                         additional_headers=headers or {}) as ws:
                ws.send("hi")
                return str(ws.recv(timeout=5))
        except InvalidStatus as e:
            return int(e.response.status_code)

    def post_ticket(self, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPSConnection("127.0.0.1", self.port,
                                                 context=self.context, timeout=10)
        try:
            connection.request("POST", "/tickets", body=b"{}", headers={
                "Content-Type": "application/json", "Origin": ORIGIN, **headers})
            response = connection.getresponse()
            body = response.read()
            return response.status, json.loads(body) if response.status == 201 else {}
        finally:
            connection.close()


@pytest_twisted.ensureDeferred
async def test_every_method_end_to_end_and_no_secret_in_any_log_line(
    certs: CertFiles, keys: dict[str, Any], serve: Any, events: list[LogEvent],
    tmp_path: Path,
) -> None:
    """Tickets, JWTs and cookies work over wss://; none of them is ever logged."""
    server = await serve(factory_for(certs, keys))
    client = Client(certs, server.port_number)
    token = jwt_for(keys, "alice")
    cookie = cookie_for("bob")
    expired = jwt_for(keys, "carol", lifetime=-120)

    def run() -> dict[str, Any]:
        results: dict[str, Any] = {}
        results["jwt query"] = client.handshake(f"?token={token}")
        results["jwt header"] = client.handshake(
            headers={"Authorization": f"Bearer {token}"})
        results["cookie"] = client.handshake(headers={"Cookie": f"session={cookie}"})
        results["nothing"] = client.handshake()
        results["expired jwt"] = client.handshake(f"?token={expired}")
        results["bad cookie"] = client.handshake(
            headers={"Cookie": "session=" + cookie[:-4] + "AAAA"})
        code, issued = client.post_ticket({"Cookie": f"session={cookie}"})
        results["ticket post"] = code
        ticket = issued["ticket"]
        results["ticket"] = client.handshake(f"?ticket={ticket}")
        results["ticket again"] = client.handshake(f"?ticket={ticket}")
        results["ticket post without credential"] = client.post_ticket({})[0]
        results["foreign origin with cookie"] = client.handshake(
            headers={"Cookie": f"session={cookie}"}, origin="https://evil.example")
        results["secrets"] = [token, cookie, expired, ticket]
        return results

    results = await deferToThread(run)
    secrets = results.pop("secrets")
    assert results == {
        "jwt query": "hi", "jwt header": "hi", "cookie": "hi", "nothing": 401,
        "expired jwt": 401, "bad cookie": 401, "ticket post": 201, "ticket": "hi",
        "ticket again": 401, "ticket post without credential": 401,
        "foreign origin with cookie": 403,
    }
    rendered = tmp_path / "log.json"
    with rendered.open("w") as out:
        observer = make_observer(LogSettings(format="json"), out=out)
        for event in events:
            observer(event)
    text = rendered.read_text() + repr(events)
    for secret in secrets:
        assert secret not in text
        assert secret[-20:] not in text
    reasons = {e.get("reason") for e in events if e.get("event") == "handshake"}
    assert {"no_credentials", "expired", "reused", "origin"} <= reasons
