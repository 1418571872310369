"""
The servers under attack, one process per configuration for the whole
package, and fresh addresses for every test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.common import CertFiles, write_cert

from .harness import (
    AUDIENCE,
    ISSUER,
    JWT_LEEWAY,
    Addresses,
    Credentials,
    Sections,
    Target,
    settings,
)
from .wire import Wires

KeyFiles = tuple[Credentials, Path, Path]


@pytest.fixture(scope="package")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return write_cert(ca, tmp_path_factory.mktemp("attack-tls"))


@pytest.fixture(scope="package")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    """The identity provider's public key and the cookie secret, on disk."""
    directory = tmp_path_factory.mktemp("attack-keys")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = directory / "jwt-public.pem"
    public.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    secret = os.urandom(48)
    secret_file = directory / "cookie-secret"
    secret_file.write_bytes(secret)
    return Credentials(private, secret), public, secret_file


def auth_sections(public: Path, secret_file: Path) -> dict[str, dict[str, object]]:
    return {
        "auth": {"methods": ["ticket", "jwt", "cookie"]},
        "auth.ticket": {"ttl": 30.0, "issue_path": "/tickets", "bind_ip": True,
                        "max_outstanding": 5},
        "auth.jwt": {"algorithms": ["RS256"], "key_file": str(public),
                     "issuer": ISSUER, "audience": AUDIENCE, "query_param": "token",
                     "leeway": JWT_LEEWAY},
        "auth.cookie": {"name": "session", "mode": "signed",
                        "secret_file": str(secret_file), "max_age": 3600.0},
    }


def run(tmp_path_factory: pytest.TempPathFactory, name: str,
        sections: dict[str, dict[str, object]], tls_files: CertFiles,
        credentials: Credentials) -> Iterator[Target]:
    target = Target(tmp_path_factory.mktemp(name), sections, tls_files.ca_cert,
                    credentials)
    try:
        yield target
    finally:
        target.server.stop()
    assert "Traceback" not in target.log(), target.log()


@pytest.fixture(scope="package")
def tls_sections(tls_files: CertFiles, key_files: KeyFiles) -> Sections:
    """The production shape: wss:// with securews's TLS, every auth method,
    compression on, JSON logs, short timeouts."""
    _, public, secret_file = key_files
    return settings(
        tls={"cert": str(tls_files.cert), "key": str(tls_files.key)},
        auth=auth_sections(public, secret_file), log_format="json")


@pytest.fixture(scope="package")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tls_files: CertFiles,
               key_files: KeyFiles, tls_sections: Sections) -> Iterator[Target]:
    """``twistd securews`` with :func:`tls_sections`."""
    yield from run(tmp_path_factory, "tls-server", tls_sections, tls_files,
                   key_files[0])


@pytest.fixture(scope="package")
def proxy_server(tmp_path_factory: pytest.TempPathFactory, tls_files: CertFiles,
                 key_files: KeyFiles) -> Iterator[Target]:
    """Behind a TLS-terminating proxy (127.0.0.1): plaintext, X-Forwarded-For
    believed from the proxy only, text logs."""
    credentials, public, secret_file = key_files
    sections = settings(
        tls={"enabled": False}, auth=auth_sections(public, secret_file),
        log_format="text", server={"trusted_proxies": ["127.0.0.1"]})
    yield from run(tmp_path_factory, "proxy-server", sections, tls_files, credentials)


#: The TCP load balancers of the passthrough targets (loopback addresses
#: no client of the tests binds).
PASSTHROUGH_BALANCER = "127.0.0.5"
PROXY_PROTOCOL_BALANCER = "127.0.0.6"


@pytest.fixture(scope="package")
def passthrough_server(tmp_path_factory: pytest.TempPathFactory, tls_files: CertFiles,
                       key_files: KeyFiles, tls_sections: Sections) -> Iterator[Target]:
    """securews terminates TLS behind a TCP load balancer in trusted_proxies,
    without the PROXY protocol: X-Forwarded-For can only be the client's own."""
    sections = {**tls_sections, "server": {
        **tls_sections["server"], "trusted_proxies": [PASSTHROUGH_BALANCER]}}
    yield from run(tmp_path_factory, "passthrough-server", sections, tls_files,
                   key_files[0])


@pytest.fixture(scope="package")
def proxy_protocol_server(tmp_path_factory: pytest.TempPathFactory,
                          tls_files: CertFiles, key_files: KeyFiles,
                          tls_sections: Sections) -> Iterator[Target]:
    """TLS passthrough with PROXY v2 from a load balancer: every client
    connects through it (tests/attacks/harness.py sends its header)."""
    sections = {**tls_sections, "server": {
        **tls_sections["server"], "trusted_proxies": [PROXY_PROTOCOL_BALANCER],
        "proxy_protocol": True}}
    yield from run(tmp_path_factory, "proxy-protocol-server", sections, tls_files,
                   key_files[0])


@pytest.fixture
def who() -> Addresses:
    return Addresses.fresh()


@pytest.fixture
def wires() -> Iterator[Wires]:
    """``wires(target, source)`` opens a hand-driven connection, closed at
    the end of the test."""
    opened = Wires()
    yield opened
    opened.close()
