"""
Every private name of Twisted and pyOpenSSL that securews touches, in one
place, checked when this module is imported.

A private name can be renamed or removed in any release.  If securews
overrode a method that no longer exists, the override would simply never
run and a defence would switch itself off without a word; if it read an
attribute that is gone, a check would quietly count zero.  So each name
is listed below with why securews needs it, :data:`NAMES` is verified at
import (a missing one stops the server from starting, naming it), and
``tests/test_twisted_fence.py`` shows each override is really called.  No
other module of securews may touch these names (a test scans for them);
Autobahn's have a fence of their own, :mod:`securews.wire._autobahn`.

The names, and why they cannot be avoided:

``TLSMemoryBIOProtocol._flushReceiveBIO`` (and what it uses:
``_lostTLSConnection``, ``_tlsConnection``, ``_aborted``,
``_shutdownTLS``, ``_tlsShutdownFinished``, ``_flushSendBIO``)
    Twisted hands each decrypted TLS record to the protocol as its own
    ``dataReceived`` call.  A client sending one-byte records makes the
    server run the whole WebSocket read path per byte (about 10 µs),
    within every byte and frame limit.  :class:`SecureTLSTransport`
    delivers all the records of one socket read in one call, and reports
    how many there were, so the session can charge them.
``TLSMemoryBIOProtocol._flushSendBIO``, ``BufferingTLSTransport._aggregator``,
``FileDescriptor._writeDisconnected``, ``Connection._aborting``
    Twisted holds every small TLS write until the end of the reactor
    iteration (a ``callLater(0)`` per connection that writes) and hands
    the encrypted bytes to a TCP transport that only queues them and asks
    the reactor to watch for writability (two ``epoll_ctl`` calls and one
    more ``epoll_wait`` per message).  :class:`SecureTLSTransport` holds
    them just as long, with one timer for every connection of the reactor,
    and passes the encrypted bytes straight to the socket when the TCP
    transport has nothing queued and is neither closed, aborted nor
    half-closed; what the socket does not take is queued as before.
``TLSMemoryBIOProtocol._appSendBuffer``, ``BufferingTLSTransport._aggregator``
(``_buffer``), ``FileDescriptor`` ``dataBuffer``/``offset``/``_tempDataLen``
    What a connection has queued and not yet sent: Twisted has no public
    count of it, and the slow-consumer limit needs one.
``OpenSSL.SSL.Context._context`` with ``OpenSSL._util.lib``
    pyOpenSSL can set one ECDH curve, not the list (X25519, P-256, P-384):
    ``SSL_CTX_set1_groups_list`` is reached through its FFI binding.
``OpenSSL.SSL.Connection._into_ssl``, ``_from_ssl``, with ``OpenSSL._util``
``lib.BIO_get_mem_data`` and ``ffi``
    pyOpenSSL tells that a memory BIO is empty only by raising
    ``WantReadError``, and Twisted's transport runs into it twice per
    small message: one more ``recv`` after the last record of a read, and
    a ``bio_read`` of the outgoing BIO after every read, before the reply
    is written.  Raising and catching it costs about 1.7 µs each, a tenth
    of the server's CPU per small message; :class:`SecureTLSTransport`
    asks how many bytes each BIO holds instead, and so also sends all of
    them at once (Twisted sends at most 32 KiB per flush, and the rest of
    a larger handshake flight only when the client next sends something,
    which it never does: twisted/twisted#5095).
``TLSMemoryBIOFactory._creatorCallable``, ``TLSMemoryBIOProtocol._connectWrapped``
and ``_checkHandshakeStatus``
    Twisted's ``makeConnection`` declares the TCP transport's interfaces
    on the TLS transport with one ``directlyProvides`` call per interface
    (nine), each replacing the last, before ``ProtocolWrapper`` declares
    them all at once: 135,000 instructions per connection for nothing.
    :class:`SecureTLSTransport` does the same steps with one call, when
    the installed Twisted's method is, statement for statement, the one it
    copies (:data:`COPIED_MAKE_CONNECTION`), and calls Twisted's otherwise.
``TCP4ServerEndpoint._interface`` / ``TCP6ServerEndpoint._interface``
(and ``_port``)
    Which interface an admin endpoint string binds, exactly as Twisted
    parsed it (positional forms, escaped colons), before it listens; and
    which address ``securews check`` (and ``twistd`` before it
    daemonizes) tries to bind, to report a port in use in one line.
``HTTPConnectionPool._factory``, ``twisted.web.client._HTTP11ClientFactory``
    The introspection and JWKS clients open a connection per request;
    Twisted's client factory logs two INFO lines for each.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from collections.abc import Callable
from functools import partial
from typing import Any
from weakref import WeakKeyDictionary, ref

from OpenSSL import SSL
from OpenSSL import _util as openssl_util
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
from zope.interface import directlyProvides, providedBy

__all__ = [
    "NAMES",
    "SecureTLSFactory",
    "SecureTLSTransport",
    "endpoint_address",
    "endpoint_interface",
    "queued_bytes",
    "quiet_pool",
    "send_now",
    "set_groups",
]

#: ``(owner, name, why)``: every private name used below.
NAMES: tuple[tuple[type[Any] | object, str, str], ...] = (
    (TLSMemoryBIOProtocol, "_flushReceiveBIO", "batch decrypted records"),
    (TLSMemoryBIOProtocol, "_lostTLSConnection", "batch decrypted records"),
    (TLSMemoryBIOProtocol, "_tlsConnection", "batch decrypted records"),
    (TLSMemoryBIOProtocol, "_aborted", "batch decrypted records"),
    (TLSMemoryBIOProtocol, "_shutdownTLS", "batch decrypted records"),
    (TLSMemoryBIOProtocol, "_tlsShutdownFinished", "batch decrypted records"),
    (TLSMemoryBIOProtocol, "_flushSendBIO", "send encrypted bytes at once"),
    (TLSMemoryBIOProtocol, "_appSendBuffer", "count queued bytes"),
    (TLSMemoryBIOFactory, "_creatorCallable", "declare a transport's interfaces once"),
    (TLSMemoryBIOProtocol, "_connectWrapped", "declare a transport's interfaces once"),
    (TLSMemoryBIOProtocol, "_checkHandshakeStatus",
     "declare a transport's interfaces once"),
    (BufferingTLSTransport, "_aggregator",
     "count queued bytes; send at the end of the reactor iteration"),
    (FileDescriptor, "_tempDataLen", "count queued bytes; send at once"),
    (FileDescriptor, "_writeDisconnected", "send at once"),
    (tcp.Connection, "_aborting", "send at once"),
    (SSL.Context, "_context", "set the ECDH groups"),
    (openssl_util, "lib", "set the ECDH groups"),
    (SSL.Connection, "_into_ssl", "see that a TLS memory BIO is empty"),
    (SSL.Connection, "_from_ssl", "see that a TLS memory BIO is empty"),
    (openssl_util, "ffi", "see that a TLS memory BIO is empty"),
    (getattr(openssl_util, "lib", None), "BIO_get_mem_data",
     "see that a TLS memory BIO is empty"),
    (TCP4ServerEndpoint, "_interface", "check the admin interface"),
    (TCP4ServerEndpoint, "_port", "check a listen address can be bound"),
    (HTTPConnectionPool, "_factory", "quiet HTTP client connections"),
)


_SOURCES: dict[str, str] = {}


def _source(module: str) -> str:
    """A module's source, read once (``inspect.getsource`` per class would
    cost seconds at every start)."""
    if module not in _SOURCES:
        try:
            _SOURCES[module] = inspect.getsource(sys.modules[module])
        except (OSError, TypeError, KeyError):
            _SOURCES[module] = ""
    return _SOURCES[module]


def _present(owner: type[Any] | object, name: str) -> bool:
    """Whether ``owner`` has ``name``, as a class member or an attribute the
    code of it or its bases sets on instances (``self.name =``)."""
    if hasattr(owner, name):
        return True
    if not inspect.isclass(owner):
        return False
    return any(f"self.{name} =" in text or f"self.{name}:" in text
               for text in map(_source, dict.fromkeys(
                   k.__module__ for k in inspect.getmro(owner))))


def _check(names: tuple[tuple[type[Any] | object, str, str], ...]) -> None:
    """
    :raises ImportError: naming each listed name this Twisted or pyOpenSSL
        lacks: securews must not start with a defence silently switched off.
    """
    missing = [f"{getattr(owner, '__qualname__', owner)}.{name} ({why})"
               for owner, name, why in names if not _present(owner, name)]
    if missing:
        raise ImportError(
            "securews relies on private names this Twisted/pyOpenSSL no longer "
            "has: " + "; ".join(missing) + ". Install the versions setup.cfg "
            "allows, or update securews/_twisted.py.")


_check(NAMES)


# -- TLS: one delivery per socket read ----------------------------------------


class _Flusher:
    """
    The small-write aggregators of one reactor that hold writes, flushed
    together at the end of the reactor iteration by one ``callLater(0)``
    (Twisted schedules one per connection that writes).

    Sending every connection's writes together, after the iteration's
    reads have all been delivered, is also what keeps a busy server
    cheap: sending each echo the moment its read is delivered (the
    previous design) doubled the kernel time per message with 50 busy
    connections, each send waking the peer on its own.

    The reactor is held weakly (a flusher must not keep a reactor or a
    test's clock alive); a timer somebody else cancelled is replaced; a
    connection whose writes raise is aborted, as a write raising in
    ``doRead`` would have dropped it, and never keeps the others' writes;
    whatever stops the run (even a ``BaseException``) leaves the
    aggregators it did not reach queued for the next one.
    """

    def __init__(self, clock: IReactorTime, *, weak: bool = True) -> None:
        self._clock: Callable[[], IReactorTime | None] = (
            ref(clock) if weak else lambda: clock)
        self._pending: list[_Aggregator] = []
        self._call: IDelayedCall | None = None

    def add(self, aggregator: _Aggregator) -> None:
        self._pending.append(aggregator)
        if self._call is None or not self._call.active():
            clock = self._clock()
            if clock is not None:
                self._call = clock.callLater(0, self.run)

    def run(self) -> None:
        self._call = None
        pending, self._pending = self._pending, []
        done = 0
        try:
            for aggregator in pending:
                done += 1
                aggregator.queued = False
                try:
                    aggregator.flush()
                except Exception:
                    _log.failure("sending a connection's writes; connection aborted")
                    aggregator.fail()
        finally:
            if done < len(pending):
                for aggregator in pending[done:]:
                    self.add(aggregator)


_log = Logger()
_FLUSHERS: WeakKeyDictionary[IReactorTime, _Flusher] = WeakKeyDictionary()


def _flusher(clock: IReactorTime) -> _Flusher:
    """The reactor's flusher (a reactor that cannot be referenced weakly
    gets one per connection, as Twisted's timers are)."""
    try:
        flusher = _FLUSHERS.get(clock)
        if flusher is None:
            flusher = _FLUSHERS[clock] = _Flusher(clock)
    except TypeError:
        return _Flusher(clock, weak=False)
    return flusher


class _Aggregator:
    """
    Twisted's aggregation of small TLS writes (``_AggregateSmallWrites``:
    writes are joined into one TLS record, sent at the end of the reactor
    iteration, or at once past 64,000 bytes), with one timer per reactor
    (:class:`_Flusher`) instead of one per connection.

    :ivar _buffer: the writes held (:func:`queued_bytes` counts them).
    :ivar queued: whether the flusher holds this aggregator.
    :ivar fail: called when sending the writes raised (aborts the
        connection).
    """

    MAX_BUFFER_SIZE = 64_000

    def __init__(self, write: Callable[[bytes], object], clock: IReactorTime,
                 fail: Callable[[], object] = lambda: None) -> None:
        self._write = write
        self.fail = fail
        self._flusher = _flusher(clock)
        self._buffer: list[bytes] = []
        self._left = self.MAX_BUFFER_SIZE
        self.queued = False

    def write(self, data: bytes) -> None:
        self._buffer.append(data + b"")  # a copy of a bytearray the caller may reuse
        self._left -= len(data)
        if self._left < 0:
            self.flush()
        elif not self.queued:
            self.queued = True
            self._flusher.add(self)

    def flush(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            del self._buffer[:]
            self._left = self.MAX_BUFFER_SIZE
            self._write(data)

    def close(self) -> None:
        self.flush()


def send_now(transport: Any, data: bytes) -> None:
    """
    Write ``data`` to ``transport``: straight to the socket of a TCP
    connection that has nothing queued, is not closing, aborted or
    half-closed (what the socket does not take, and everything else, is
    queued by Twisted as always, and a failed send is left for Twisted's
    write to discover).  No reactor round trip, no ``epoll_ctl``.
    """
    if (type(transport) is tcp.Server and transport.connected
            and not transport.disconnecting and not transport._aborting
            and not transport._writeDisconnected and not transport._tempDataLen
            and len(transport.dataBuffer) == transport.offset):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


#: Twisted's ``TLSMemoryBIOProtocol.makeConnection``, as
#: :meth:`SecureTLSTransport.makeConnection` copies it (Twisted 26.10).
_TWISTEDS_MAKE_CONNECTION = """
def makeConnection(self, transport):
    self._tlsConnection = self.factory._creatorCallable(self)
    self._appSendBuffer = []
    for interface in providedBy(transport):
        directlyProvides(self, interface)
    Protocol.makeConnection(self, transport)
    self.factory.registerProtocol(self)
    if self._connectWrapped:
        ProtocolWrapper.makeConnection(self, transport)
    self._checkHandshakeStatus()
"""


def _syntax(source: str) -> str | None:
    """
    A method's syntax tree as text, without its name, docstring and
    annotations: the same for the same code whatever its comments, layout,
    indentation or type hints.  ``None`` unless ``source`` is one plain
    function.
    """
    tree = ast.parse(textwrap.dedent(source))
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        return None
    function = tree.body[0]
    if ast.get_docstring(function, clean=False) is not None:
        function.body = function.body[1:]
    function.name, function.returns = "", None
    for argument in ast.walk(function.args):
        if isinstance(argument, ast.arg):
            argument.annotation = None
    return ast.dump(function)


def _is_copied() -> bool:
    """
    Whether the installed Twisted's ``makeConnection`` is, statement for
    statement, the one copied, with the same globals, and
    ``BufferingTLSTransport`` does not override it.
    """
    method = TLSMemoryBIOProtocol.makeConnection
    names = getattr(method, "__globals__", {})
    if (BufferingTLSTransport.makeConnection is not method
            or [names.get(name) for name in ("Protocol", "ProtocolWrapper",
                                             "directlyProvides", "providedBy")]
            != [Protocol, ProtocolWrapper, directlyProvides, providedBy]):
        return False
    try:
        installed = _syntax(inspect.getsource(method))
    except Exception:  # no source to read: Twisted's method is used, safely
        return False
    return installed is not None and installed == _syntax(_TWISTEDS_MAKE_CONNECTION)


#: Whether :meth:`SecureTLSTransport.makeConnection` may use its copy.  Any
#: other Twisted gets its own method, so a step it added or moved is never
#: skipped; only the saving is lost (a test says so on the versions CI runs).
COPIED_MAKE_CONNECTION = _is_copied()


def _holds(bio: Any) -> int:
    """How many bytes a TLS connection's memory BIO holds."""
    return int(openssl_util.lib.BIO_get_mem_data(bio, openssl_util.ffi.NULL))


class SecureTLSTransport(BufferingTLSTransport):
    """
    Twisted's TLS transport, delivering every record a socket read made
    available in one ``dataReceived`` call, and sending what a connection
    writes at the end of the reactor iteration (one timer for all of
    them), straight to the socket when it can take it.

    Before that call the wrapped protocol's ``tlsRecordsReceived(count,
    size)`` is called, when it has one, with how many records the data
    came in and their size: tiny records cost the server per record,
    whatever they carry.
    """

    def makeConnection(self, transport: Any) -> None:
        """
        Gather writes with :class:`_Aggregator`, on the transport's reactor
        (a transport without one keeps Twisted's aggregation), then do what
        Twisted's ``makeConnection`` does (:data:`COPIED_MAKE_CONNECTION`),
        with the transport's interfaces declared in one ``directlyProvides``
        call instead of one per interface (each replacing the last, before
        ``ProtocolWrapper`` declares them all).  A transport that does not
        connect its protocol at once (never one securews builds) gets
        Twisted's method: there the loop's last call is what remains.
        """
        clock = getattr(transport, "reactor", None)
        if clock is not None:
            aggregator = _Aggregator(partial(TLSMemoryBIOProtocol.write, self), clock,
                                     self.abortConnection)
            self._aggregator = aggregator  # type: ignore[assignment]
            self.write = aggregator.write  # type: ignore[method-assign]
        if not (COPIED_MAKE_CONNECTION and self._connectWrapped):
            super().makeConnection(transport)  # type: ignore[no-untyped-call]
            return
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()  # type: ignore[no-untyped-call]

    #: While :meth:`loseConnection` gathers: the records read from the
    #: send BIO, not yet sent.
    _held: list[bytes] | None = None
    #: What :meth:`loseConnection` gathered, sent with TLS's close_notify.
    _unsent = b""

    def loseConnection(self) -> None:
        """
        Twisted's, with what the protocol wrote last (a close frame, an
        HTTP answer) and TLS's close_notify sent in one write: Twisted
        sends them apart, one more system call and one more packet for
        every connection that ends.
        """
        held: list[bytes] = []
        self._held = held
        try:
            self._aggregator.flush()
        finally:
            self._held = None
            self._unsent += b"".join(held)
        TLSMemoryBIOProtocol.loseConnection(self)
        if self._unsent:  # no close_notify yet (TLS still busy): send it now
            if self.connected:
                self._flushSendBIO()
            else:  # lost meanwhile: nowhere to send it
                self._unsent = b""

    def _flushSendBIO(self) -> None:
        tls = self._tlsConnection
        waiting = _holds(tls._from_ssl)
        data = tls.bio_read(waiting) if waiting else b""
        held = self._held
        if held is not None:
            if data:
                held.append(data)
            return
        if self._unsent:
            data, self._unsent = self._unsent + data, b""
        if data:
            send_now(self.transport, data)

    def _flushReceiveBIO(self) -> None:
        tls = self._tlsConnection
        chunks: list[bytes] = []
        ended: Failure | None = None
        shutdown = False
        while not self._lostTLSConnection:
            try:
                chunk = tls.recv(2**15)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                shutdown = True
                break
            except SSL.Error:
                ended = Failure()
                break
            chunks.append(chunk)
            # Without read-ahead (which pyOpenSSL cannot turn on) OpenSSL
            # takes one record at a time from the BIO: when the BIO is empty
            # and no decrypted byte is left, recv could only raise
            # WantReadError.  (A record's plaintext, at most 16 KiB, always
            # fits in one recv: pending() is a safeguard.)
            if not (_holds(tls._into_ssl) or tls.pending()):
                break
        if chunks and not self._aborted:
            data = b"".join(chunks)
            counter = getattr(self.wrappedProtocol, "tlsRecordsReceived", None)
            if counter is not None:
                counter(len(chunks), len(data))
            if not self._aborted:
                ProtocolWrapper.dataReceived(self, data)
        if shutdown and not self._aborted:
            # What the data before the peer's close_notify made the protocol
            # write goes out before TLS shuts down (Twisted's aggregator
            # would hold it past the shutdown and drop it).
            aggregator = self._aggregator
            if isinstance(aggregator, _Aggregator):
                aggregator.flush()
        if shutdown:
            # TLS has shut down: no more data will come (Twisted's order).
            self._shutdownTLS()  # type: ignore[no-untyped-call]
            self._tlsShutdownFinished(None)  # type: ignore[no-untyped-call]
        elif ended is not None:
            self._tlsShutdownFinished(ended)  # type: ignore[no-untyped-call]
            # Its traceback holds this frame, which holds it: a cycle that
            # would keep the connection for the cyclic garbage collector.
            ended.cleanFailure()
        self._flushSendBIO()


class SecureTLSFactory(TLSMemoryBIOFactory):
    """
    :class:`~twisted.protocols.tls.TLSMemoryBIOFactory` building
    :class:`SecureTLSTransport`, and none when the wrapped factory drops
    the connection at accept (Twisted's would wrap ``None``).
    """

    protocol = SecureTLSTransport

    def buildProtocol(self, addr: IAddress | None) -> SecureTLSTransport | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


# -- what a connection has queued --------------------------------------------


def queued_bytes(transport: Any) -> int:
    """
    Bytes written to ``transport`` itself and not yet passed on: a TCP
    transport's write buffers, a TLS transport's cleartext buffer and its
    small-write aggregator.  Wrapping layers are not followed (the caller
    walks them).
    """
    # vars(), not getattr(): Twisted's TLS wrapper forwards unknown
    # attributes to the transport beneath, which would be counted twice.
    own = getattr(transport, "__dict__", {})
    total = 0
    if isinstance(transport, FileDescriptor):
        # Class defaults until Twisted's first doWrite: bytes written
        # before one (all of them, for a peer that never reads once
        # ``send_now`` wrote the first straight to the socket) wait in
        # the second buffer only.
        total += len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    pending = own.get("_appSendBuffer")
    if isinstance(pending, list):
        total += sum(len(chunk) for chunk in pending)
    aggregator = own.get("_aggregator")
    if aggregator is not None:
        small = getattr(aggregator, "__dict__", {}).get("_buffer")
        if isinstance(small, list):
            total += sum(len(chunk) for chunk in small)
    return total


# -- OpenSSL, endpoints, HTTP client -----------------------------------------


def set_groups(context: SSL.Context, groups: bytes) -> bool:
    """``SSL_CTX_set1_groups_list``: the ECDH groups, in order of preference.

    :returns: whether OpenSSL accepted the list.
    """
    result: int = openssl_util.lib.SSL_CTX_set1_curves_list(context._context, groups)
    return result == 1


def endpoint_interface(endpoint: IStreamServerEndpoint) -> str | None:
    """The interface a TCP server endpoint binds (``""``: every one), or
    ``None`` when it is not a TCP endpoint."""
    if not isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        return None
    interface = getattr(endpoint, "_interface", None)
    return interface if isinstance(interface, str) else None


def endpoint_address(endpoint: IStreamServerEndpoint) -> tuple[str, int, bool] | None:
    """``(interface, port, ipv6)`` a TCP server endpoint binds, or ``None``
    when it is not a TCP endpoint."""
    interface = endpoint_interface(endpoint)
    port = getattr(endpoint, "_port", None)
    if interface is None or not isinstance(port, int):
        return None
    return interface, port, isinstance(endpoint, TCP6ServerEndpoint)


class _QuietClientFactory(_HTTP11ClientFactory):
    """Twisted's, without two INFO events ("Starting factory") per request."""

    noisy = False


def quiet_pool(pool: HTTPConnectionPool) -> HTTPConnectionPool:
    """``pool``, opening its connections without per-connection log lines."""
    pool._factory = _QuietClientFactory
    return pool
