"""
Helpers every kind of test uses: certificates from a trustme CA, the TLS
context of the ``websockets`` test clients, and the rule for tools a
developer machine may lack.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, NoReturn

import attrs
import pytest
import trustme

__all__ = ["EACH_VERSION", "CertFiles", "unavailable", "websocket_client_tls",
           "write_cert"]

#: Run a test once with a TLS 1.2 client and once with a TLS 1.3 one.
EACH_VERSION = pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
    ids=["TLSv1.2", "TLSv1.3"])


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer machine without the tool; fail under CI, which
    installs it (a skipped check must not pass for a green run)."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def websocket_client_tls(cafile: object) -> ssl.SSLContext:
    """
    A TLS context for the ``websockets`` sync client, capped at TLS 1.2.

    That client reads in a background thread while its main thread writes
    the upgrade request; under TLS 1.3 the reader handles the server's
    session tickets at the same moment on the same SSL object, which
    Python's ssl module does not make safe, and about one connection in a
    few hundred stalls.  TLS 1.3 itself is tested with single-threaded
    clients in test_tls.py and test_proxy_protocol.py.
    """
    context = ssl.create_default_context(cafile=str(cafile))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


@attrs.frozen
class CertFiles:
    """PEM files for a server certificate issued by ``ca``."""

    ca: trustme.CA
    ca_cert: Path
    cert: Path
    key: Path
    chain: Path


def write_cert(ca: trustme.CA, directory: Path, *names: str,
               **issue: Any) -> CertFiles:
    """Issue a leaf for ``names`` and write leaf, key, chain and CA files."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*(names or ("localhost", "127.0.0.1", "::1")), **issue)
    ca_cert = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_cert))
    cert = directory / "cert.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    key = directory / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    chain = directory / "fullchain.pem"
    chain.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    return CertFiles(ca, ca_cert, cert, key, chain)


