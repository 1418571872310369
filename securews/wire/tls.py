"""
securews's own TLS context: settings in, an OpenSSL connection creator out.

securews never takes an ``ssl:`` endpoint string: those accept whatever
protocol versions and suites the platform defaults allow. This module
builds one pyOpenSSL context with the Mozilla "intermediate" profile
made stricter: TLS 1.2 or newer, forward-secret AEAD suites only (an
operator's ``ciphers`` string is checked against that rule, not
trusted), no TLS compression, no renegotiation, server cipher
preference, no stateless session tickets (their key would live as long
as the process, undoing forward secrecy: a client resumes from the
server's session cache instead, except under mutual TLS, where every
connection is a full handshake that verifies the client's certificate),
ECDH groups X25519, P-256 and P-384, ALPN ``http/1.1``, and the full
certificate chain. OpenSSL frees a connection's read and write buffers
while they are empty (``SSL_MODE_RELEASE_BUFFERS``, as Twisted's
``CertificateOptions`` does), so an idle connection holds no 34 KiB of
TLS buffers.

Certificates and keys are read and checked here, so that a missing
file, a key that does not belong to the certificate or an expired
certificate stops the server before it listens, with a one-line message.
:meth:`ServerTLSContext.reload` reads them again (certificate renewal):
the same checks, and a refusal leaves the context in use untouched.
No sockets are opened here.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import TypeVar

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from securews._twisted import set_groups
from securews.rules.config import ConfigError, ConfigErrors, TLSSettings

__all__ = [
    "DEFAULT_CIPHERS",
    "ECDH_GROUPS",
    "ServerCredentials",
    "ServerTLSContext",
    "load_credentials",
    "peer_subject",
    "server_context",
]

#: Mozilla "intermediate" (v5.7) TLS 1.2 suites, minus the DHE ones (no
#: DH parameters are configured, so they could never be chosen).
DEFAULT_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
])
ECDH_GROUPS = b"X25519:P-256:P-384"
ALPN = b"http/1.1"
_MIN_RSA_BITS = 2048
_T = TypeVar("_T")
_FS_AEAD = re.compile(
    r"(?:ECDHE|DHE)-[A-Z0-9-]*(?:GCM|CHACHA20-POLY1305|CCM)(?:-[A-Z0-9]+)*"
)


@attrs.frozen
class ServerCredentials:
    """A checked certificate, its chain and its private key."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes
    client_cas: tuple[x509.Certificate, ...] = ()


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", key=key) from None


def _certificates(path: str, key: str) -> list[x509.Certificate]:
    data = _read(path, key)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{path} holds no PEM certificate", key=key)
    return certs


def _private_key(path: str) -> PrivateKeyTypes:
    data = _read(path, "tls.key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"{path} is encrypted; securews needs an unencrypted key readable "
            "only by its user", key="tls.key",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{path} holds no PEM private key", key="tls.key") from None


def _public_bytes(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    return public.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def load_credentials(settings: TLSSettings, *,
                     now: datetime.datetime) -> ServerCredentials:
    """
    Read and check the certificate, chain, key and client CA files.

    :param now: the current time, for the expiry check.
    :raises ConfigError: naming the ``tls.*`` key and the problem (every
        unreadable file at once, :class:`ConfigErrors`).
    """
    problems: list[ConfigError] = []

    def attempt(read: Callable[[], _T]) -> _T | None:
        try:
            return read()
        except ConfigError as e:
            problems.append(e)
            return None

    certs = attempt(lambda: _certificates(settings.cert, "tls.cert"))
    extra = attempt(lambda: _certificates(settings.chain, "tls.chain")
                    if settings.chain else [])
    key = attempt(lambda: _private_key(settings.key))
    cas = attempt(lambda: _certificates(settings.client_ca, "tls.client_ca")
                  if settings.client_ca else [])
    if certs is None or extra is None or key is None or cas is None:
        raise ConfigErrors.of(problems)
    leaf, chain = certs[0], certs[1:] + extra
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
                      | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        kind = "DSA" if isinstance(key, dsa.DSAPrivateKey) else type(key).__name__
        raise ConfigError(f"{kind} keys are not supported", key="tls.key")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < _MIN_RSA_BITS:
        raise ConfigError(
            f"RSA key of {key.key_size} bits is too weak (minimum {_MIN_RSA_BITS})",
            key="tls.key",
        )
    if _public_bytes(key) != _public_bytes(leaf):
        raise ConfigError(
            f"{settings.key} does not match the certificate in {settings.cert}",
            key="tls.key",
        )
    if leaf.not_valid_after_utc <= now:
        raise ConfigError(
            f"certificate in {settings.cert} expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            key="tls.cert",
        )
    if leaf.not_valid_before_utc > now:
        raise ConfigError(
            f"certificate in {settings.cert} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            key="tls.cert",
        )
    return ServerCredentials(leaf, tuple(chain), key, tuple(cas))


def _select_alpn(connection: SSL.Connection,
                 offered: list[bytes]) -> bytes | SSL._NoOverlappingProtocols:
    return ALPN if ALPN in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _set_groups(context: SSL.Context) -> None:
    if not set_groups(context, ECDH_GROUPS):
        raise ConfigError("OpenSSL refused the ECDH group list", key="tls")


def _strong_suite(name: str) -> bool:
    """Forward-secret AEAD with a full-length tag (TLS 1.3 suites all are)."""
    if "CCM8" in name or "CCM_8" in name:
        return False
    return name.startswith("TLS_") or bool(_FS_AEAD.fullmatch(name))


def _check_ciphers(context: SSL.Context, configured: str) -> None:
    names = SSL.Connection(context, None).get_cipher_list()
    weak = [n for n in names if not _strong_suite(n)]
    if weak:
        raise ConfigError(
            f"{configured!r} enables suites that are not forward-secret AEAD: "
            + ", ".join(weak[:5]),
            key="tls.ciphers",
        )


def _build_context(settings: TLSSettings, creds: ServerCredentials) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(
        SSL.TLS1_3_VERSION if settings.min_version == "1.3" else SSL.TLS1_2_VERSION
    )
    context.set_options(
        SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3 | SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1
        | SSL.OP_NO_COMPRESSION
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_TICKET
        | SSL.OP_SINGLE_ECDH_USE
    )
    # Idle connections are the common case: without this, each keeps its
    # read and write record buffers (about 34 KiB) for its whole life.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ciphers = settings.ciphers or DEFAULT_CIPHERS
    if "@" in ciphers:
        raise ConfigError(
            f"{ciphers!r}: '@' directives (such as @SECLEVEL) are not allowed; "
            "list suites only", key="tls.ciphers",
        )
    try:
        context.set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise ConfigError(f"OpenSSL knows no suite in {ciphers!r}",
                          key="tls.ciphers") from None
    _set_groups(context)
    context.use_certificate(creds.leaf)
    context.use_privatekey(creds.key)  # type: ignore[arg-type]
    for extra in creds.chain:
        context.add_extra_chain_cert(extra)
    context.check_privatekey()
    context.set_alpn_select_callback(_select_alpn)
    context.set_session_id(b"securews")
    # OpenSSL verifies a client certificate in a full handshake only: a
    # session resumed later carries the certificate it began with, expired
    # since or not, and under TLS 1.3 every resumption begins a new session.
    # Under mutual TLS every connection is a full handshake: no cache here,
    # and no stateless tickets (OP_NO_TICKET above), which would resume
    # without one.
    context.set_session_cache_mode(
        SSL.SESS_CACHE_OFF if creds.client_cas else SSL.SESS_CACHE_SERVER)
    if creds.client_cas:
        store = context.get_cert_store()
        assert store is not None
        for ca in creds.client_cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
            context.add_client_ca(ca)
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    _check_ciphers(context, ciphers)
    return context


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLSContext:
    """
    Creates server-side TLS connections from one checked context, which
    :meth:`reload` can replace.

    :ivar credentials: what the current context serves; kept so the
        certificate's expiry can be reported.
    """

    def __init__(self, settings: TLSSettings, credentials: ServerCredentials) -> None:
        self.settings = settings
        self.credentials = credentials
        self._ssl_context = _build_context(settings, credentials)

    def reload(self, now: datetime.datetime) -> None:
        """
        Read the certificate, chain, key and client CA files again and use
        them for new connections.

        Connections already made keep the context they were made with;
        nothing changes unless every check passes.

        :param now: the current time, for the expiry check.
        :raises ConfigError: naming the ``tls.*`` key and the problem; the
            previous credentials stay in use.
        """
        credentials = load_credentials(self.settings, now=now)
        try:
            context = _build_context(self.settings, credentials)
        except SSL.Error:
            raise ConfigError(
                f"OpenSSL refused the certificate in {self.settings.cert} or "
                f"the key in {self.settings.key}", key="tls.cert",
            ) from None
        self.credentials, self._ssl_context = credentials, context

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        return SSL.Connection(self._ssl_context, None)


def server_context(settings: TLSSettings, *,
                   now: datetime.datetime | None = None) -> ServerTLSContext:
    """
    Build securews's TLS context from ``[tls]`` settings.

    :raises ConfigError: for unreadable, mismatched, weak or expired
        credentials, or a ``ciphers`` string that admits weak suites.
    """
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    return ServerTLSContext(settings, load_credentials(settings, now=now))


def peer_subject(connection: object) -> tuple[tuple[str, str], ...] | None:
    """
    The verified client-certificate subject of a TLS transport.

    :returns: ``((attribute, value), ...)`` or ``None`` when the peer
        presented no certificate (or the transport is not TLS).
    """
    getter = getattr(connection, "getPeerCertificate", None)
    if getter is None:
        return None
    cert = getter()
    if cert is None:
        return None
    return tuple(
        (attribute.rfc4514_attribute_name, str(attribute.value))
        for attribute in cert.to_cryptography().subject
    )
