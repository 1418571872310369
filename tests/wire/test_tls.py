"""
securews.wire.tls against real clients.

Every handshake here is a real TLS handshake on 127.0.0.1 with the
server's own context, served by the ``serve`` fixture.  Blocking clients
(the ``ssl`` module, pyOpenSSL on a socket, the ``websockets`` sync
client, a hand-written ClientHello) run in a thread via ``deferToThread``
while the reactor serves.  Every refusal is paired with a control: the
same client code succeeding when only the property under test changes,
so a refusal is proven to be the server's doing.

Two OpenSSL builds are involved: the ``ssl`` module's and the one inside
``cryptography`` that the server (and the pyOpenSSL clients) use.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa, x25519
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as openssl_lib
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from websockets.sync.client import connect

from securews.rules.config import ConfigError, TLSSettings
from securews.testing import make_config
from securews.wire.factory import SecureServerFactory
from securews.wire.protocol import SecureServerProtocol
from securews.wire.tls import DEFAULT_CIPHERS, ServerTLSContext, server_context
from tests.support.common import EACH_VERSION, CertFiles, write_cert

HOST = "127.0.0.1"
TIMEOUT = 5.0
NOW = datetime.datetime.now(datetime.UTC)
#: Run a test once with an ``ssl`` client of each TLS version securews serves.
TLS13_AEAD = frozenset({
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
})


# -- servers ------------------------------------------------------------------


async def _serve_tls(serve: Any, files: CertFiles,
                     protocol: type[SecureServerProtocol] | None = None,
                     **tls: str) -> Any:
    """Listen a dev-mode SecureServerFactory using ``files`` and ``[tls]``
    extras; the scans connect many times from one address, so the connect
    rate is out of their way."""
    config = make_config(
        tls={"cert": str(files.cert), "key": str(files.key), **tls}, dev=True,
        ratelimit={"connect_burst": 10_000, "connect_rate": 10_000},
    )
    return await serve(SecureServerFactory(config, protocol=protocol))


class SubjectReporter(SecureServerProtocol):
    """Sends ``repr()`` of the verified client-certificate subject on open."""

    def onSessionOpen(self) -> None:
        self.sendMessage(repr(self.tls_client_subject).encode("utf-8"), False)


@pytest.fixture(scope="module")
def rsa_certs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """An RSA-2048 server certificate (issued once: RSA keys are slow to make)."""
    return write_cert(ca, tmp_path_factory.mktemp("rsa"),
                      key_type=trustme.KeyType.RSA)


# -- ssl-module clients -----------------------------------------------------


def _client_context(cafile: Path | None = None, *,
                    version: ssl.TLSVersion | None = None,
                    ciphers: str | None = None) -> ssl.SSLContext:
    """A client context; without ``cafile`` it does not verify the server."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile=str(cafile))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


@attrs.frozen
class Session:
    """What a client saw on a connection the server accepted."""

    version: str | None
    cipher: str
    compression: str | None
    alpn: str | None
    status_line: bytes


def _session(port: int, ctx: ssl.SSLContext) -> Session:
    """Handshake, send a plain HTTP request, read the status line of the reply."""
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(b"GET /elsewhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        cipher = conn.cipher()
        assert cipher is not None
        return Session(conn.version(), cipher[0], conn.compression(),
                       conn.selected_alpn_protocol(), data.split(b"\r\n")[0])


def _tls_error(port: int, ctx: ssl.SSLContext) -> ssl.SSLError:
    """
    Connect and wait for the server's first word; return the TLS error.

    Nothing is sent after the handshake: under TLS 1.3 the server judges a
    client certificate after the client's handshake has finished, so its
    alert arrives on the first read.
    """
    try:
        with socket.create_connection((HOST, port), timeout=TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            data = conn.recv(1)
    except ssl.SSLError as e:
        return e
    raise AssertionError(f"no TLS error; the server sent {data!r}")


# -- pyOpenSSL clients --------------------------------------------------------


@attrs.frozen
class RawSession:
    """What a pyOpenSSL client saw on a completed handshake."""

    version: str
    cipher: str | None
    group: str | None


def _pyopenssl_context(*, version: int = SSL.TLS1_2_VERSION,
                       groups: bytes | None = None,
                       tls13_suites: bytes | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(version)
    ctx.set_max_proto_version(version)
    ctx.set_verify(SSL.VERIFY_NONE)
    if groups is not None:
        assert openssl_lib.SSL_CTX_set1_curves_list(ctx._context, groups) == 1
    if tls13_suites is not None:
        # Security level 0 lets the client offer CCM_8 and integrity-only
        # suites at all, so that refusing them is up to the server.
        ctx.set_cipher_list(b"ALL:@SECLEVEL=0")
        assert openssl_lib.SSL_CTX_set_ciphersuites(ctx._context, tls13_suites) == 1
    return ctx


def _blocking_socket(port: int) -> socket.socket:
    """A blocking socket (pyOpenSSL needs one) whose reads still time out."""
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.settimeout(None)
    limit = struct.pack("ll", int(TIMEOUT), 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
    return sock


def _pyopenssl_handshake(port: int, ctx: SSL.Context) -> RawSession:
    """Complete a handshake; raises ``SSL.Error`` if it fails."""
    with _blocking_socket(port) as sock:
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        return RawSession(conn.get_protocol_version_name(),
                          conn.get_cipher_name(), conn.get_group_name())


def _pyopenssl_error(port: int, ctx: SSL.Context) -> str:
    try:
        _pyopenssl_handshake(port, ctx)
    except SSL.Error as e:
        return str(e)
    raise AssertionError("the handshake succeeded")


# == 1. protocol versions ======================================================


@EACH_VERSION
@pytest_twisted.ensureDeferred
async def test_server_accepts_tls_1_2_and_1_3_clients(
        certs: CertFiles, serve: Any, version: ssl.TLSVersion) -> None:
    """A TLS 1.2 or 1.3 client (with legacy suites enabled) completes a session."""
    server = await _serve_tls(serve, certs)
    ctx = _client_context(certs.ca_cert, version=version,
                          ciphers="DEFAULT:@SECLEVEL=0")
    session = await deferToThread(_session, server.port_number, ctx)
    assert session.version == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                               ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert session.status_line.startswith(b"HTTP/1.1 ")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1],
                         ids=["TLSv1.0", "TLSv1.1"])
@pytest_twisted.ensureDeferred
async def test_server_refuses_tls_1_0_and_1_1_clients(
        certs: CertFiles, serve: Any, version: ssl.TLSVersion) -> None:
    """A TLS 1.0/1.1 client gets the server's protocol_version alert."""
    server = await _serve_tls(serve, certs)
    # SECLEVEL=0 makes the client willing to send a TLS 1.0/1.1 ClientHello
    # at all; the error is then the alert the *server* sent
    # (TLSV1_ALERT_PROTOCOL_VERSION, "tlsv1 alert protocol version"), not
    # the client's local UNSUPPORTED_PROTOCOL.  The same client code with
    # TLS 1.2 succeeds: test_server_accepts_tls_1_2_and_1_3_clients.
    ctx = _client_context(certs.ca_cert, version=version,
                          ciphers="DEFAULT:@SECLEVEL=0")
    error = await deferToThread(_tls_error, server.port_number, ctx)
    assert error.reason == "TLSV1_ALERT_PROTOCOL_VERSION", error


@pytest_twisted.ensureDeferred
async def test_min_version_1_3_refuses_tls_1_2_client(
        certs: CertFiles, serve: Any) -> None:
    """With min_version = "1.3" a TLS 1.2 client is refused and 1.3 still works."""
    server = await _serve_tls(serve, certs, min_version="1.3")
    tls12 = _client_context(certs.ca_cert, version=ssl.TLSVersion.TLSv1_2)
    error = await deferToThread(_tls_error, server.port_number, tls12)
    assert error.reason == "TLSV1_ALERT_PROTOCOL_VERSION", error
    tls13 = _client_context(certs.ca_cert, version=ssl.TLSVersion.TLSv1_3)
    session = await deferToThread(_session, server.port_number, tls13)
    assert session.version == "TLSv1.3"


# == 2. cipher suites ==========================================================


def _tls12_suites() -> list[dict[str, Any]]:
    """Every suite the client's OpenSSL can use with TLS 1.2, by its own account."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    return [c for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"]


def _scan(port: int, names: list[str]) -> tuple[set[str], dict[str, str]]:
    """Offer each suite alone over TLS 1.2; return (accepted, refused: reason)."""
    accepted: set[str] = set()
    refused: dict[str, str] = {}
    for name in names:
        ctx = _client_context(version=ssl.TLSVersion.TLSv1_2,
                              ciphers=f"{name}:@SECLEVEL=0")
        try:
            with socket.create_connection((HOST, port), timeout=TIMEOUT) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as conn:
                cipher = conn.cipher()
                assert cipher is not None
                assert cipher[0] == name
                accepted.add(name)
        except ssl.SSLError as e:
            refused[name] = str(e.reason)
    return accepted, refused


@pytest.mark.parametrize("key_type", ["ECDSA", "RSA"])
@pytest_twisted.ensureDeferred
async def test_tls_1_2_cipher_scan(certs: CertFiles, rsa_certs: CertFiles,
                                   serve: Any, key_type: str) -> None:
    """Of every TLS 1.2 suite the client knows, the server takes only ECDHE+AEAD."""
    files = certs if key_type == "ECDSA" else rsa_certs
    server = await _serve_tls(serve, files)
    suites = {c["name"]: c for c in _tls12_suites()}
    accepted, refused = await deferToThread(_scan, server.port_number, list(suites))
    assert accepted, refused
    for name in accepted:
        suite = suites[name]
        assert suite["kea"] == "kx-ecdhe", suite
        assert suite["aead"], suite
        assert suite["symmetric"].endswith(("-gcm", "chacha20-poly1305")), suite
    assert accepted <= set(DEFAULT_CIPHERS.split(":"))
    # Every suite the client actually offered and the server did not take
    # was refused by the server's handshake_failure alert; the only local
    # refusals are PSK/SRP suites, which the client cannot offer without
    # credentials (so they never reached the server).
    by_server = {n for n, r in refused.items() if r == "SSLV3_ALERT_HANDSHAKE_FAILURE"}
    local = {n for n, r in refused.items() if r == "NO_CIPHERS_AVAILABLE"}
    assert by_server | local == set(refused), refused
    assert all("PSK" in n or n.startswith("SRP-") for n in local), local
    # Controls: forward secret but CBC, and AEAD but not forward secret.
    assert {f"ECDHE-{key_type}-AES128-SHA", "AES128-GCM-SHA256"} <= by_server


_TLS13_CANDIDATES = [
    "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256", "TLS_SHA256_SHA256", "TLS_SHA384_SHA384",
]


def _client_knows_tls13_suite(name: str) -> bool:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    return openssl_lib.SSL_CTX_set_ciphersuites(ctx._context, name.encode()) == 1


def _scan_tls13(port: int) -> tuple[set[str], dict[str, str]]:
    """Offer each TLS 1.3 suite alone; return (accepted, refused: error)."""
    accepted: set[str] = set()
    refused: dict[str, str] = {}
    for name in filter(_client_knows_tls13_suite, _TLS13_CANDIDATES):
        ctx = _pyopenssl_context(version=SSL.TLS1_3_VERSION,
                                 tls13_suites=name.encode())
        try:
            session = _pyopenssl_handshake(port, ctx)
        except SSL.Error as e:
            refused[name] = str(e)
        else:
            assert session.cipher == name
            accepted.add(name)
    return accepted, refused


@pytest_twisted.ensureDeferred
async def test_tls_1_3_suites_are_aead(certs: CertFiles, serve: Any) -> None:
    """TLS 1.3 negotiates an AEAD TLS_* suite; integrity-only suites are refused."""
    server = await _serve_tls(serve, certs)
    ctx = _client_context(certs.ca_cert, version=ssl.TLSVersion.TLSv1_3)
    session = await deferToThread(_session, server.port_number, ctx)
    assert session.version == "TLSv1.3"
    assert session.cipher in TLS13_AEAD
    accepted, refused = await deferToThread(_scan_tls13, server.port_number)
    assert accepted, refused
    assert accepted <= TLS13_AEAD
    # CCM and the integrity-only suites (RFC 9150) reached the server (the
    # client runs at security level 0) and were refused by its alert.
    assert set(refused) == set(filter(_client_knows_tls13_suite,
                                      _TLS13_CANDIDATES)) - accepted
    assert "TLS_SHA256_SHA256" in refused
    for name, error in refused.items():
        assert "alert handshake failure" in error, (name, error)


# == 3. compression, ALPN, renegotiation, ECDH groups ========================


def _client_hello(compression_methods: bytes) -> bytes:
    """A minimal TLS 1.2 ClientHello record offering ``compression_methods``."""

    def extension(kind: int, data: bytes) -> bytes:
        return struct.pack("!HH", kind, len(data)) + data

    def u16_list(values: list[int]) -> bytes:
        return struct.pack(f"!H{len(values)}H", 2 * len(values), *values)

    suites = [0xC02B, 0xC02F, 0xC02C, 0xC030]  # ECDHE-{ECDSA,RSA}-AES-GCM
    extensions = b"".join([
        extension(10, u16_list([0x001D, 0x0017])),  # groups: X25519, P-256
        extension(11, b"\x01\x00"),  # EC point formats: uncompressed
        extension(13, u16_list([0x0403, 0x0804, 0x0401])),  # signature algorithms
        extension(0xFF01, b"\x00"),  # empty renegotiation_info
    ])
    body = (b"\x03\x03" + os.urandom(32) + b"\x00" + u16_list(suites)
            + bytes([len(compression_methods)]) + compression_methods
            + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def _first_record(port: int, hello: bytes) -> tuple[int, bytes]:
    """Send ``hello``; return the type and payload of the first record back."""
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        sock.sendall(hello)
        stream = sock.makefile("rb")
        header = stream.read(5)
        assert len(header) == 5, header
        kind, _version, length = struct.unpack("!BHH", header)
        return kind, stream.read(length)


@attrs.frozen
class ServerHello:
    """The fields of a TLS 1.2 ServerHello these tests look at."""

    version: int
    cipher: int
    compression: int


def _parse_server_hello(payload: bytes) -> ServerHello:
    assert payload[0] == 2, payload[:4]  # handshake type server_hello
    body = payload[4:]
    session_id_length = body[34]
    at = 35 + session_id_length
    cipher, compression = struct.unpack("!HB", body[at:at + 3])
    return ServerHello(struct.unpack("!H", body[:2])[0], cipher, compression)


@pytest_twisted.ensureDeferred
async def test_server_never_selects_tls_compression(
        certs: CertFiles, serve: Any) -> None:
    """The server answers a ClientHello offering DEFLATE with the null method."""
    server = await _serve_tls(serve, certs)
    kind, payload = await deferToThread(
        _first_record, server.port_number, _client_hello(b"\x01\x00")
    )
    assert kind == 22, (kind, payload)  # a handshake record: the hello was fine
    hello = _parse_server_hello(payload)
    assert hello.version == 0x0303
    assert hello.cipher in (0xC02B, 0xC02C)  # it parsed: an offered ECDSA suite
    assert hello.compression == 0  # null, not DEFLATE (1)


@pytest_twisted.ensureDeferred
async def test_server_refuses_client_offering_only_compression(
        certs: CertFiles, serve: Any) -> None:
    """A ClientHello offering DEFLATE alone is answered with a fatal alert."""
    server = await _serve_tls(serve, certs)
    kind, payload = await deferToThread(
        _first_record, server.port_number, _client_hello(b"\x01")
    )
    assert kind == 21, (kind, payload)  # an alert record, no ServerHello
    assert payload[0] == 2, payload  # fatal (OpenSSL sends illegal_parameter)


@pytest_twisted.ensureDeferred
async def test_python_client_session_is_uncompressed(
        certs: CertFiles, serve: Any) -> None:
    """A Python client that permits compression still gets none."""
    server = await _serve_tls(serve, certs)
    ctx = _client_context(certs.ca_cert, version=ssl.TLSVersion.TLSv1_2)
    ctx.options &= ~ssl.OP_NO_COMPRESSION
    session = await deferToThread(_session, server.port_number, ctx)
    assert session.status_line.startswith(b"HTTP/1.1 ")
    assert session.compression is None


@pytest.mark.parametrize(("offered", "selected"), [
    (["h2", "http/1.1"], "http/1.1"),
    (["http/1.1"], "http/1.1"),
    (["h2"], None),
])
@pytest_twisted.ensureDeferred
async def test_alpn_selects_http_1_1(certs: CertFiles, serve: Any,
                                     offered: list[str], selected: str | None) -> None:
    """ALPN selects http/1.1 when offered and nothing (not h2) otherwise."""
    server = await _serve_tls(serve, certs)
    ctx = _client_context(certs.ca_cert)
    ctx.set_alpn_protocols(offered)
    session = await deferToThread(_session, server.port_number, ctx)
    assert session.status_line.startswith(b"HTTP/1.1 ")
    assert session.alpn == selected


@attrs.frozen
class Renegotiation:
    """What a TLS 1.2 client saw when it asked to renegotiate."""

    error: str | None
    pending: bool
    reply: bytes


def _renegotiate(port: int) -> Renegotiation:
    """Handshake, request a renegotiation, then try to use the connection."""
    ctx = _pyopenssl_context(version=SSL.TLS1_2_VERSION)
    with _blocking_socket(port) as sock:
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        assert conn.renegotiate()
        error = None
        try:
            conn.do_handshake()
        except SSL.Error as e:
            error = str(e)
        pending = conn.renegotiate_pending()
        reply = b""
        if error is None:
            conn.sendall(b"GET /elsewhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
            reply = conn.recv(4096)
        return Renegotiation(error, pending, reply)


# OpenSSL >= 3.0's SSL_OP_ALLOW_CLIENT_RENEGOTIATION (not exported by pyOpenSSL).
_OP_ALLOW_CLIENT_RENEGOTIATION = 0x100


@pytest_twisted.ensureDeferred
async def test_server_refuses_client_renegotiation(
        certs: CertFiles, serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS 1.2 client's renegotiation is refused with a no_renegotiation alert."""
    config = make_config(tls={"cert": str(certs.cert), "key": str(certs.key)},
                         dev=True)
    server = await serve(SecureServerFactory(config))
    refused = await deferToThread(_renegotiate, server.port_number)
    # The server answers the new ClientHello with a no_renegotiation alert:
    # the client's handshake fails and the renegotiation never completes.
    assert refused.error is not None
    assert "no renegotiation" in refused.error
    assert refused.pending
    # total_renegotiations() is not asserted: the client counts a
    # renegotiation it *started* (1 here and in the control alike) and the
    # server side counts none (0 even when the control completes one), so
    # it cannot tell a refusal from a success.
    # Control: the same client against securews's context with only
    # OP_NO_RENEGOTIATION swapped for ALLOW_CLIENT_RENEGOTIATION
    # renegotiates and keeps using the connection.
    with monkeypatch.context() as patch:
        patch.setattr(SSL, "OP_NO_RENEGOTIATION", _OP_ALLOW_CLIENT_RENEGOTIATION)
        listening = serve(SecureServerFactory(config))
    permissive = await listening
    allowed = await deferToThread(_renegotiate, permissive.port_number)
    assert allowed.error is None, (
        "control server refused too: does securews.wire.tls still set "
        "OP_NO_RENEGOTIATION (the option this control swaps out)?"
    )
    assert not allowed.pending
    assert allowed.reply.startswith(b"HTTP/1.1 404 ")


def _ticket_issued(port: int, ctx: ssl.SSLContext) -> bool:
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(b"GET /elsewhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 ")
        assert conn.session is not None
        return bool(conn.session.has_ticket)


@pytest_twisted.ensureDeferred
async def test_server_issues_no_tls_1_2_session_ticket(
        certs: CertFiles, serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS 1.2 client gets no session ticket (the ticket key would outlive FS)."""
    config = make_config(tls={"cert": str(certs.cert), "key": str(certs.key)},
                         dev=True)
    server = await serve(SecureServerFactory(config))
    ctx = _client_context(certs.ca_cert, version=ssl.TLSVersion.TLSv1_2)
    assert not await deferToThread(_ticket_issued, server.port_number, ctx)
    # Control: securews's context with OP_NO_TICKET left out issues one.
    with monkeypatch.context() as patch:
        patch.setattr(SSL, "OP_NO_TICKET", 0)
        listening = serve(SecureServerFactory(config))
    permissive = await listening
    assert await deferToThread(_ticket_issued, permissive.port_number, ctx)


_GROUP_NAMES = {b"X25519": "x25519", b"P-256": "secp256r1", b"P-384": "secp384r1"}


@pytest.mark.parametrize("groups", [b"X25519", b"P-256", b"P-384"])
@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION],
                         ids=["TLSv1.2", "TLSv1.3"])
@pytest_twisted.ensureDeferred
async def test_ecdhe_over_allowed_group_succeeds(
        rsa_certs: CertFiles, serve: Any, version: int, groups: bytes) -> None:
    """A client restricted to X25519, P-256 or P-384 negotiates that group."""
    server = await _serve_tls(serve, rsa_certs)
    ctx = _pyopenssl_context(version=version, groups=groups)
    session = await deferToThread(_pyopenssl_handshake, server.port_number, ctx)
    assert session.group == _GROUP_NAMES[groups]
    if version == SSL.TLS1_2_VERSION:
        assert session.cipher is not None
        assert session.cipher.startswith("ECDHE-RSA-")


@pytest.mark.parametrize("groups", [b"X448", b"P-521"])
@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION],
                         ids=["TLSv1.2", "TLSv1.3"])
@pytest_twisted.ensureDeferred
async def test_ecdhe_over_other_group_fails(
        rsa_certs: CertFiles, serve: Any, version: int, groups: bytes) -> None:
    """A client restricted to X448 or P-521 gets a handshake_failure alert."""
    # An RSA certificate, so that under TLS 1.2 the client's group list
    # constrains only the key exchange (with an ECDSA P-256 certificate
    # it would also rule out the certificate, whatever the ECDH groups).
    server = await _serve_tls(serve, rsa_certs)
    ctx = _pyopenssl_context(version=version, groups=groups)
    error = await deferToThread(_pyopenssl_error, server.port_number, ctx)
    assert "alert handshake failure" in error


# == 4. the full chain is served ===============================================


@attrs.frozen
class ChainFiles:
    """A leaf issued by an intermediate CA, and the files to serve it with."""

    root: Path
    leaf: Path
    intermediate: Path
    fullchain: Path
    key: Path


@pytest.fixture(scope="module")
def chain_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> ChainFiles:
    directory = tmp_path_factory.mktemp("chain")
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("localhost", "127.0.0.1")
    leaf_pem, intermediate_pem = leaf.cert_chain_pems
    files = ChainFiles(*(directory / name for name in (
        "root.pem", "leaf.pem", "intermediate.pem", "fullchain.pem", "key.pem")))
    ca.cert_pem.write_to_path(str(files.root))
    leaf_pem.write_to_path(str(files.leaf))
    intermediate_pem.write_to_path(str(files.intermediate))
    files.fullchain.write_bytes(leaf_pem.bytes() + intermediate_pem.bytes())
    leaf.private_key_pem.write_to_path(str(files.key))
    return files


@pytest.mark.parametrize("layout", ["chain_setting", "fullchain_cert"])
@pytest_twisted.ensureDeferred
async def test_server_sends_intermediate_so_root_only_client_verifies(
        chain_files: ChainFiles, serve: Any, layout: str) -> None:
    """A client trusting only the root verifies a leaf issued by an intermediate."""
    if layout == "chain_setting":
        tls = {"cert": str(chain_files.leaf), "chain": str(chain_files.intermediate)}
    else:
        tls = {"cert": str(chain_files.fullchain)}
    config = make_config(tls={**tls, "key": str(chain_files.key)}, dev=True)
    server = await serve(SecureServerFactory(config))
    ctx = _client_context(chain_files.root)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    session = await deferToThread(_session, server.port_number, ctx)
    assert session.status_line.startswith(b"HTTP/1.1 ")


@pytest_twisted.ensureDeferred
async def test_root_only_client_fails_without_served_chain(
        chain_files: ChainFiles, serve: Any) -> None:
    """Control: serving the leaf alone, the same root-only client cannot verify."""
    config = make_config(
        tls={"cert": str(chain_files.leaf), "key": str(chain_files.key)}, dev=True
    )
    server = await serve(SecureServerFactory(config))
    error = await deferToThread(_tls_error, server.port_number,
                             _client_context(chain_files.root))
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert error.verify_code == 20, error  # unable to get local issuer certificate


# == 5. mutual TLS ============================================================


@attrs.frozen
class ClientIdentity:
    cert: Path
    key: Path


def _client_identity(issuer: trustme.CA, directory: Path, *,
                     not_after: datetime.datetime | None = None) -> ClientIdentity:
    directory.mkdir(parents=True, exist_ok=True)
    leaf = issuer.issue_cert("alice@example.com", common_name="alice",
                             organization_name="Example Org",
                             not_before=NOW - datetime.timedelta(days=2),
                             not_after=not_after)
    identity = ClientIdentity(directory / "client.pem", directory / "client-key.pem")
    identity.cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(identity.key))
    return identity


@pytest.fixture(scope="module")
def client_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    """A CA for client certificates only, and its PEM file."""
    authority = trustme.CA(organization_name="securews client CA")
    path = tmp_path_factory.mktemp("client-ca") / "client-ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


def _mtls_context(certs: CertFiles, identity: ClientIdentity | None, *,
                  version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = _client_context(certs.ca_cert, version=version)
    if identity is not None:
        ctx.load_cert_chain(str(identity.cert), str(identity.key))
    return ctx


def _first_message(url: str, ctx: ssl.SSLContext) -> str | bytes:
    """Open a WebSocket session with the ``websockets`` sync client; first message."""
    # TLS 1.2 only: the sync client reads in a background thread while it
    # writes the upgrade request, and under TLS 1.3 that reader processes
    # the server's NewSessionTickets concurrently with the write on the
    # same SSL object, which Python's ssl module does not make safe: about
    # one connection in 400 then stalls until the handshake timeout.  TLS
    # 1.3 with a single-threaded client does not (see _session), so this
    # is the client's race, not the server's.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with connect(url, ssl=ctx, open_timeout=TIMEOUT) as ws:
        return ws.recv(timeout=TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_mutual_tls_app_sees_verified_client_subject(
        certs: CertFiles, serve: Any, client_ca: tuple[trustme.CA, Path],
        tmp_path: Path) -> None:
    """With client_ca set, the app sees the verified subject of the client cert."""
    authority, ca_path = client_ca
    identity = _client_identity(authority, tmp_path / "alice")
    server = await _serve_tls(serve, certs, protocol=SubjectReporter,
                              client_ca=str(ca_path))
    message = await deferToThread(_first_message, server.url(),
                               _mtls_context(certs, identity))
    assert isinstance(message, str)
    assert "('CN', 'alice')" in message
    assert "('O', 'Example Org')" in message


@pytest_twisted.ensureDeferred
async def test_without_client_ca_app_sees_no_client_subject(
        certs: CertFiles, serve: Any, client_ca: tuple[trustme.CA, Path],
        tmp_path: Path) -> None:
    """Control: without client_ca the same app and client see no subject."""
    authority, _ = client_ca
    identity = _client_identity(authority, tmp_path / "alice")
    server = await _serve_tls(serve, certs, protocol=SubjectReporter)
    message = await deferToThread(_first_message, server.url(),
                               _mtls_context(certs, identity))
    assert message == "None"


@pytest.mark.parametrize(("version", "presented", "reason"), [
    (ssl.TLSVersion.TLSv1_2, "none", "SSLV3_ALERT_HANDSHAKE_FAILURE"),
    (ssl.TLSVersion.TLSv1_3, "none", "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
    (ssl.TLSVersion.TLSv1_2, "expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
    (ssl.TLSVersion.TLSv1_3, "expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
], ids=["TLSv1.2-none", "TLSv1.3-none", "TLSv1.2-expired", "TLSv1.3-expired"])
@pytest_twisted.ensureDeferred
async def test_mutual_tls_refuses_client_without_a_valid_certificate(
        certs: CertFiles, serve: Any, client_ca: tuple[trustme.CA, Path],
        tmp_path: Path, version: ssl.TLSVersion, presented: str, reason: str) -> None:
    """With client_ca set, a client presenting no certificate, or one of
    client_ca's past its notAfter, is refused in the handshake."""
    authority, ca_path = client_ca
    identity = None if presented == "none" else _client_identity(
        authority, tmp_path / "expired", not_after=NOW - datetime.timedelta(days=1))
    server = await _serve_tls(serve, certs, client_ca=str(ca_path))
    error = await deferToThread(_tls_error, server.port_number,
                             _mtls_context(certs, identity, version=version))
    assert error.reason == reason, error
    # Control: the same client with a certificate from client_ca gets in.
    identity = _client_identity(authority, tmp_path / "alice")
    session = await deferToThread(_session, server.port_number,
                               _mtls_context(certs, identity, version=version))
    assert session.status_line.startswith(b"HTTP/1.1 ")


@EACH_VERSION
@pytest_twisted.ensureDeferred
async def test_mutual_tls_refuses_certificate_from_other_ca(
        certs: CertFiles, serve: Any, client_ca: tuple[trustme.CA, Path],
        tmp_path: Path, version: ssl.TLSVersion) -> None:
    """A client certificate issued by a CA other than client_ca is refused."""
    _, ca_path = client_ca
    # The server's own CA: trusted for server certificates, not for clients.
    stranger = _client_identity(certs.ca, tmp_path / "mallory")
    server = await _serve_tls(serve, certs, client_ca=str(ca_path))
    error = await deferToThread(_tls_error, server.port_number,
                             _mtls_context(certs, stranger, version=version))
    assert error.reason == "TLSV1_ALERT_UNKNOWN_CA", error


@attrs.frozen
class Resumption:
    """One connection offering ``session``: whether TLS resumed it, and the
    status line of the reply to a plain request (empty when dropped)."""

    reused: bool
    status_line: bytes
    session: ssl.SSLSession | None


def _resume(port: int, ctx: ssl.SSLContext,
            session: ssl.SSLSession | None) -> Resumption:
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as conn:
        reused = conn.session_reused
        data = b""
        try:
            conn.sendall(b"GET /elsewhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
            while b"\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            data = b""
        return Resumption(reused, data.split(b"\r\n")[0], conn.session)


@EACH_VERSION
@pytest_twisted.ensureDeferred
async def test_under_mutual_tls_every_connection_is_a_full_handshake(
        certs: CertFiles, serve: Any, client_ca: tuple[trustme.CA, Path],
        tmp_path: Path, version: ssl.TLSVersion) -> None:
    """
    OpenSSL verifies a client certificate in a full handshake only: a
    resumed session would carry its certificate past its expiry (under
    TLS 1.3 every resumption begins a new session, so indefinitely), and
    a client that renewed its certificate would keep being offered the
    old one.  Under mutual TLS no session resumes: a client that kept its
    previous session (TLS 1.3: a ticket it offers; TLS 1.2: none, the
    server names no session) and now presents a renewed certificate
    makes a full handshake and is served.  Control: without client_ca
    the same client resumes.
    """
    authority, ca_path = client_ca
    old = _client_identity(authority, tmp_path / "old",
                           not_after=NOW + datetime.timedelta(hours=1))
    renewed = _client_identity(authority, tmp_path / "renewed")
    mutual = await _serve_tls(serve, certs, client_ca=str(ca_path))
    plain = await _serve_tls(serve, certs)
    for server, resumes in ((mutual, False), (plain, True)):
        ctx = _mtls_context(certs, old, version=version)
        first = await deferToThread(_resume, server.port_number, ctx, None)
        assert (first.reused, first.status_line[:9]) == (False, b"HTTP/1.1 ")
        ctx.load_cert_chain(str(renewed.cert), str(renewed.key))
        again = await deferToThread(_resume, server.port_number, ctx, first.session)
        assert (again.reused, again.status_line[:9]) == (resumes, b"HTTP/1.1 ")


def _refusal(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> str:
    """Connect offering ``session`` and wait for the server's first word:
    the TLS alert's reason, or ``"served"``."""
    try:
        with socket.create_connection((HOST, port), timeout=TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost",
                                session=session) as conn:
            conn.sendall(b"GET /elsewhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return "served" if conn.recv(4096) else "dropped"
    except ssl.SSLError as e:
        return str(e.reason)


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_that_expired_since_its_last_connection_is_refused(
        certs: CertFiles, serve: Any, client_ca: tuple[trustme.CA, Path],
        tmp_path: Path) -> None:
    """
    The case a session cache would let through: a client connects while
    its certificate is valid, the certificate expires, and the client
    reconnects offering its session.  It makes a full handshake and is
    refused, under TLS 1.2 and 1.3.  (Waits three seconds of real time:
    OpenSSL reads the wall clock.)
    """
    authority, ca_path = client_ca
    expiry = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + \
        datetime.timedelta(seconds=3)
    identity = _client_identity(authority, tmp_path / "short", not_after=expiry)
    server = await _serve_tls(serve, certs, client_ca=str(ca_path))
    versions = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    contexts = [_mtls_context(certs, identity, version=v) for v in versions]
    sessions = []
    for ctx in contexts:
        first = await deferToThread(_resume, server.port_number, ctx, None)
        assert first.status_line[:9] == b"HTTP/1.1 "
        sessions.append(first.session)
    wait = expiry.timestamp() + 1.1 - datetime.datetime.now(datetime.UTC).timestamp()
    await deferLater(reactor, max(0.0, wait), lambda: None)
    for ctx, session in zip(contexts, sessions, strict=True):
        refused = await deferToThread(_refusal, server.port_number, ctx, session)
        assert refused == "SSLV3_ALERT_CERTIFICATE_EXPIRED"


@pytest_twisted.ensureDeferred
async def test_no_session_resumes_across_a_reload(
        certs: CertFiles, serve: Any) -> None:
    """
    A reload builds a new context, with a new, empty session cache: every
    client then makes a full handshake, with the certificate and key read
    then.
    """
    config = make_config(
        tls={"cert": str(certs.cert), "key": str(certs.key)}, dev=True,
        ratelimit={"connect_burst": 10_000, "connect_rate": 10_000})
    context = server_context(config.tls, now=NOW)
    server = await serve(SecureServerFactory(config), context=context)
    ctx = _client_context(certs.ca_cert)
    first = await deferToThread(_resume, server.port_number, ctx, None)
    again = await deferToThread(_resume, server.port_number, ctx, first.session)
    assert again.reused  # control: without a reload, the session resumes
    context.reload(NOW)
    after = await deferToThread(_resume, server.port_number, ctx, again.session)
    assert (after.reused, after.status_line[:9]) == (False, b"HTTP/1.1 ")


# == 6. configuration errors ===================================================


def _key_lines(path: Path) -> list[str]:
    """The base64 lines of a PEM key file (what must never be echoed)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return []
    return [line for line in text.splitlines()
            if len(line) >= 16 and not line.startswith("-----")]


def _config_error(settings: TLSSettings, *,
                  now: datetime.datetime = NOW) -> ConfigError:
    """server_context must refuse ``settings`` with a one-line, key-free message."""
    with pytest.raises(ConfigError) as info:
        server_context(settings, now=now)
    message = str(info.value)
    assert "\n" not in message
    assert "PRIVATE KEY" not in message
    for line in _key_lines(Path(settings.key)) + _key_lines(Path(settings.cert)):
        assert line not in message
    assert message.startswith(f"{info.value.key}: ")
    return info.value


def _settings(files: CertFiles, **changes: str) -> TLSSettings:
    return TLSSettings(**{"cert": str(files.cert), "key": str(files.key), **changes})


def test_valid_settings_build_a_context(certs: CertFiles, rsa_certs: CertFiles) -> None:
    """Control: the certificates used below are accepted as they are."""
    for files in (certs, rsa_certs):
        context = server_context(_settings(files, chain=str(files.chain),
                                           client_ca=str(files.ca_cert)), now=NOW)
        assert isinstance(context, ServerTLSContext)


def _mode(context: ServerTLSContext) -> int:
    """The OpenSSL mode bits of a new connection made from ``context``."""
    conn = context.serverConnectionForTLS(None)  # type: ignore[arg-type]
    # pyOpenSSL has no getter, and refuses Context.set_mode once a
    # connection exists; SSL_set_mode ORs the bits in and returns the
    # result, so 0 reads the connection's mode (inherited from the context).
    return int(openssl_lib.SSL_set_mode(conn._ssl, 0))


def test_context_releases_idle_connection_buffers(certs: CertFiles) -> None:
    """
    Every context securews builds, and rebuilds on reload, has
    SSL_MODE_RELEASE_BUFFERS (as Twisted's CertificateOptions does): an
    idle connection gives its TLS record buffers back.  Control: a bare
    pyOpenSSL context reads back without it.
    """
    bare = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None)
    assert not openssl_lib.SSL_set_mode(bare._ssl, 0) & SSL.MODE_RELEASE_BUFFERS
    context = server_context(_settings(certs), now=NOW)
    assert _mode(context) & SSL.MODE_RELEASE_BUFFERS
    context.reload(NOW)
    assert _mode(context) & SSL.MODE_RELEASE_BUFFERS


@pytest.mark.parametrize("setting", ["cert", "key", "chain", "client_ca"])
def test_config_error_for_missing_file(certs: CertFiles, tmp_path: Path,
                                       setting: str) -> None:
    """A path that cannot be read is refused, naming the setting and the reason."""
    missing = tmp_path / "missing.pem"
    error = _config_error(_settings(certs, **{setting: str(missing)}))
    assert error.key == f"tls.{setting}"
    assert f"cannot read {missing}: No such file or directory" in str(error)


def test_config_error_for_directory_as_key(certs: CertFiles, tmp_path: Path) -> None:
    """A key path that is a directory is refused as unreadable."""
    error = _config_error(_settings(certs, key=str(tmp_path)))
    assert error.key == "tls.key"
    assert f"cannot read {tmp_path}: Is a directory" in str(error)


@pytest.mark.parametrize("setting", ["cert", "chain", "client_ca"])
def test_config_error_for_file_without_pem_certificate(
        certs: CertFiles, tmp_path: Path, setting: str) -> None:
    """A certificate file holding no PEM certificate is refused."""
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    error = _config_error(_settings(certs, **{setting: str(junk)}))
    assert error.key == f"tls.{setting}"
    assert f"{junk} holds no PEM certificate" in str(error)


def test_config_error_for_key_file_as_cert_does_not_echo_key(
        certs: CertFiles) -> None:
    """Pointing cert at the key file is refused without quoting the key."""
    error = _config_error(_settings(certs, cert=str(certs.key)))
    assert error.key == "tls.cert"
    assert "holds no PEM certificate" in str(error)
    assert _key_lines(certs.key)  # the key check above had lines to look for


def test_config_error_for_cert_file_as_key(certs: CertFiles) -> None:
    """A key file holding no PEM private key is refused."""
    error = _config_error(_settings(certs, key=str(certs.cert)))
    assert error.key == "tls.key"
    assert f"{certs.cert} holds no PEM private key" in str(error)


def test_config_error_for_key_not_matching_cert(
        ca: trustme.CA, certs: CertFiles, tmp_path: Path) -> None:
    """A private key that does not belong to the certificate is refused."""
    other = write_cert(ca, tmp_path / "other")
    error = _config_error(_settings(certs, key=str(other.key)))
    assert error.key == "tls.key"
    assert f"{other.key} does not match the certificate in {certs.cert}" in str(error)


def test_config_error_for_expired_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    """A certificate whose notAfter has passed is refused with its expiry date."""
    files = write_cert(ca, tmp_path, not_before=datetime.datetime(2000, 1, 1),
                       not_after=datetime.datetime(2001, 2, 3, 4, 5))
    error = _config_error(_settings(files))
    assert error.key == "tls.cert"
    assert f"certificate in {files.cert} expired on 2001-02-03 04:05 UTC" in str(error)


def test_expiry_is_checked_against_now(ca: trustme.CA, tmp_path: Path) -> None:
    """The certificate is refused from its notAfter instant on, not before."""
    not_after = datetime.datetime(2040, 6, 1, 12, 0, tzinfo=datetime.UTC)
    files = write_cert(ca, tmp_path, not_after=not_after.replace(tzinfo=None))
    just_before = not_after - datetime.timedelta(seconds=1)
    assert isinstance(server_context(_settings(files), now=just_before),
                      ServerTLSContext)
    error = _config_error(_settings(files), now=not_after)
    assert error.key == "tls.cert"
    assert "expired on 2040-06-01 12:00 UTC" in str(error)


def test_config_error_for_not_yet_valid_certificate(
        ca: trustme.CA, tmp_path: Path) -> None:
    """A certificate whose notBefore is in the future is refused."""
    files = write_cert(ca, tmp_path, not_before=datetime.datetime(2999, 1, 2, 3, 4),
                       not_after=datetime.datetime(3000, 1, 1))
    error = _config_error(_settings(files))
    assert error.key == "tls.cert"
    assert (f"certificate in {files.cert} is not valid before 2999-01-02 03:04 UTC"
            in str(error))


def test_config_error_for_encrypted_key(certs: CertFiles, tmp_path: Path) -> None:
    """A passphrase-protected private key is refused."""
    key = serialization.load_pem_private_key(certs.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"correct horse battery staple"),
    ))
    error = _config_error(_settings(certs, key=str(encrypted)))
    assert error.key == "tls.key"
    assert f"{encrypted} is encrypted" in str(error)


def _self_signed(key: Any, directory: Path) -> tuple[Path, Path]:
    """Write a self-signed localhost certificate for ``key`` and the key."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2000, 1, 1))
        .not_valid_after(datetime.datetime(3000, 1, 1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "weak-cert.pem", directory / "weak-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_path, key_path


def test_config_error_for_rsa_1024_key(tmp_path: Path) -> None:
    """An RSA key shorter than 2048 bits is refused as too weak."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert, key_path = _self_signed(key, tmp_path)
    error = _config_error(TLSSettings(cert=str(cert), key=str(key_path)))
    assert error.key == "tls.key"
    assert "RSA key of 1024 bits is too weak (minimum 2048)" in str(error)


def test_config_error_for_unsupported_key_type(
        certs: CertFiles, tmp_path: Path) -> None:
    """A private key of a type TLS servers cannot sign with is refused."""
    key_path = tmp_path / "x25519.pem"
    key_path.write_bytes(x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    error = _config_error(_settings(certs, key=str(key_path)))
    assert error.key == "tls.key"
    assert "X25519PrivateKey keys are not supported" in str(error)


@pytest.mark.parametrize(("ciphers", "weak"), [
    ("AES128-SHA", "AES128-SHA"),  # neither forward secret nor AEAD
    ("AES128-GCM-SHA256", "AES128-GCM-SHA256"),  # AEAD, not forward secret
    ("ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES128-SHA"),  # forward secret, not AEAD
    ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-SHA384",
     "ECDHE-RSA-AES256-SHA384"),  # one weak suite among good ones
    ("ECDHE-ECDSA-AES128-CCM8", "ECDHE-ECDSA-AES128-CCM8"),  # 64-bit tag
])
def test_config_error_for_weak_ciphers(certs: CertFiles, ciphers: str,
                                       weak: str) -> None:
    """A ciphers string enabling a non-forward-secret or non-AEAD suite is refused."""
    error = _config_error(_settings(certs, ciphers=ciphers))
    assert error.key == "tls.ciphers"
    assert f"{ciphers!r} enables suites that are not forward-secret AEAD" in str(error)
    assert weak in str(error)


def test_config_error_for_security_level_directive(certs: CertFiles) -> None:
    """'@SECLEVEL=0' (which would admit weak client keys) is refused."""
    from securews.wire.tls import DEFAULT_CIPHERS

    error = _config_error(_settings(certs, ciphers=DEFAULT_CIPHERS + ":@SECLEVEL=0"))
    assert error.key == "tls.ciphers"
    assert "'@' directives" in str(error)


@pytest.mark.parametrize("ciphers", ["NO-SUCH-SUITE", "AES-9000-GCM", "ÄES128"])
def test_config_error_for_unknown_ciphers(certs: CertFiles, ciphers: str) -> None:
    """A ciphers string naming no suite OpenSSL knows is refused."""
    error = _config_error(_settings(certs, ciphers=ciphers))
    assert error.key == "tls.ciphers"
    assert f"OpenSSL knows no suite in {ciphers!r}" in str(error)


@pytest_twisted.ensureDeferred
async def test_configured_ciphers_are_the_ones_served(
        certs: CertFiles, serve: Any) -> None:
    """Control: a strong ciphers string is accepted and limits what is served."""
    server = await _serve_tls(serve, certs, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
    accepted, refused = await deferToThread(
        _scan, server.port_number,
        ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    )
    assert accepted == {"ECDHE-ECDSA-AES256-GCM-SHA384"}
    assert refused == {"ECDHE-ECDSA-AES128-GCM-SHA256": "SSLV3_ALERT_HANDSHAKE_FAILURE"}
