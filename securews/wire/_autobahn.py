"""
Every private name (and every behaviour-bearing internal) of Autobahn
that securews touches, in one place, checked when this module is imported.

securews uses Autobahn as its wire engine (frames, masking, UTF-8, the
close handshake) and takes over the rest by overriding methods and
reading state that Autobahn does not publish as API.  If Autobahn renamed
one of those methods, the override would never run and a defence would
switch itself off without a word.  So:

* :data:`OVERRIDDEN` (and :data:`SERVER_OVERRIDDEN`) list each method of
  Autobahn's Twisted ``WebSocketServerProtocol`` (and its bases) securews
  overrides or calls, with the parameters it relies on; the import fails,
  naming it, if one is missing or its parameters changed.
* :data:`STATE` lists each attribute securews reads or writes, checked
  the same way (set by Autobahn's code).
* ``tests/wire/test_autobahn_fence.py`` drives real sessions and shows
  that each override is really called; it also scans securews for private
  Autobahn names outside the protocol classes and this module.
* setup.cfg pins the release line this was verified against
  (:data:`VERIFIED`); README says how to verify a new one.

Twisted's and pyOpenSSL's private names have their own fence,
:mod:`securews._twisted`.
"""

from __future__ import annotations

import inspect
import re
import sys
from importlib.metadata import version
from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.compress_deflate import PerMessageDeflate

__all__ = [
    "HANDSHAKE_STATE",
    "OVERRIDDEN",
    "STATE",
    "VERIFIED",
    "pending_compressed_octets",
    "per_message_compress",
    "release_handshake_state",
    "replace_per_message_compress",
]

#: The Autobahn releases securews was verified against: from, below.
VERIFIED = ((26, 10, 2), (27,))

#: ``WebSocketProtocol`` methods securews overrides (or calls), the
#: parameters it relies on, and why.
OVERRIDDEN: dict[str, tuple[tuple[str, ...], str]] = {
    "_dataReceived": (("data",), "the session reads frames without the "
                      "per-read debug formatting of Autobahn's dataReceived"),
    "_onOpen": ((), "log the accepted handshake before pipelined frames run; "
                "no transport details"),
    "_connectionMade": ((), "no debug line formatted eagerly"),
    "_connectionLost": (("reason",), "no debug line formatted eagerly"),
    "connectionMade": ((), "no transport details, no debug lines"),
    "connectionLost": (("reason",), "no debug lines"),
    "dataReceived": (("data",), "no debug line formatted eagerly"),
    "_fail_connection": (("code", "reason"), "fixed close reasons per code"),
    "_protocol_violation": (("reason",), "1002 and stop reading"),
    "_invalid_payload": (("reason",), "1007 and stop reading"),
    "_max_message_size_exceeded": (("msg_size", "max_msg_size", "reason"),
                                   "count oversize closes"),
    "onFrameBegin": ((), "charge every frame from its header"),
    "onFrameData": (("payload",), "skip data frames once closing; exact sizes "
                    "of compressed messages"),
    "onMessageFrameBegin": (("length",), "exact sizes of compressed messages"),
    "onMessageEnd": ((), "deliver without the per-message event Deferred"),
    "onPing": (("payload",), "answer pings only while open and read"),
    "sendData": (("data", "sync", "chopsize"), "every write counts against "
                 "the queue limit; no per-write debug formatting"),
    "sendCloseFrame": (("code", "reasonUtf8", "isReply"), "close timer"),
    "dropConnection": (("abort",), "reap connections that linger"),
}
SERVER_OVERRIDDEN: dict[str, tuple[tuple[str, ...], str]] = {
    "processHandshake": ((), "securews reads and decides the head first"),
    "succeedHandshake": (("res",), "no 101 once the connection is refused"),
    "failHandshake": (("reason", "code", "responseHeaders"),
                      "securews writes every refusal itself"),
}
#: Protocol attributes securews reads or writes, and why.
STATE: dict[str, str] = {
    "CONFIG_ATTRS": "options to copy to each protocol: securews copies its own "
                    "(Autobahn's loop formats them all for a debug line)",
    "_perMessageCompress": "replace the deflate extension with a bounded one",
    "websocket_extensions_in_use": "the same",
    "message_data_total_length": "count only inflated octets",
    "current_frame": "frame opcode and length at its header",
    "current_frame_masker": "how much of a compressed frame arrived",
    "_isMessageCompressed": "the same",
    "message_data": "deliver a message without the event Deferred",
    "message_is_binary": "the same",
    "failedByMe": "no delivery after a protocol error",
    "trackedTimings": "fall back to Autobahn's path when timings are on",
    "send_queue": "fall back for queued writes; count queued bytes",
    "trafficStats": "keep Autobahn's wire counters right",
    "closedByMe": "which side closed (metrics)",
    "droppedByMe": "the same",
    "localCloseCode": "the code the server closed with (metrics)",
    "wasOpenHandshakeTimeout": "count handshake timeouts",
    "wasNotCleanReason": "the reason Autobahn logs (never client text)",
    "wasServerConnectionDropTimeout": "the close timer fired",
}
#: Protocol attributes that hold the opening handshake's request and
#: answer, read by Autobahn only before the session opens: set to ``None``
#: once it has (:func:`release_handshake_state`).
HANDSHAKE_STATE: tuple[str, ...] = (
    "http_request_data", "http_status_line", "http_headers", "http_request_uri",
    "http_request_path", "http_request_params", "http_request_host",
    "http_response_data", "websocket_protocols", "websocket_extensions",
)
#: ``PerMessageDeflate`` internals the bounded extension builds on.
DEFLATE_STATE: dict[str, str] = {
    "_is_server": "which direction inflates",
    "_decompressor": "no message under way when it is replaced",
    "_compressor": "the same",
}


def _parameters(function: Any) -> tuple[str, ...]:
    names = list(inspect.signature(function).parameters)
    return tuple(name for name in names if name != "self")


def _module_sources(klass: type[Any]) -> str:
    """The source of every module defining ``klass`` or one of its bases,
    read once (``inspect.getsource`` per class would cost seconds)."""
    texts = []
    for module in dict.fromkeys(k.__module__ for k in inspect.getmro(klass)):
        try:
            texts.append(inspect.getsource(sys.modules[module]))
        except (OSError, TypeError, KeyError):
            continue
    return "\n".join(texts)


def _sets(klass: type[Any], name: str, sources: str) -> bool:
    """Whether ``klass`` (or a base) has ``name`` or assigns ``self.name``
    (alone or among the targets of one assignment)."""
    return (hasattr(klass, name) or f"self.{name} =" in sources
            or f"self.{name}:" in sources
            or re.search(rf"^\s*[\w., ]*\bself\.{name}\b[\w., ]*=(?!=)",
                         sources, re.MULTILINE) is not None)


def _check() -> None:
    """
    :raises ImportError: naming every listed method that is missing or whose
        parameters changed, and every attribute Autobahn no longer sets, or
        an Autobahn outside the verified range.
    """
    problems = []
    found = tuple(int(part) for part in version("autobahn").split(".")[:3]
                  if part.isdigit())
    low, high = VERIFIED
    if not low <= found < high:
        problems.append(f"autobahn {version('autobahn')} is outside the verified "
                        f"range {'.'.join(map(str, low))} to below "
                        f"{'.'.join(map(str, high))}")
    klass = WebSocketServerProtocol  # Autobahn's Twisted server protocol
    for name, (params, why) in {**OVERRIDDEN, **SERVER_OVERRIDDEN}.items():
        method = getattr(klass, name, None)
        if method is None:
            problems.append(f"WebSocketServerProtocol.{name} is gone ({why})")
        elif _parameters(method)[:len(params)] != params:
            problems.append(f"WebSocketServerProtocol.{name} now takes "
                            f"{_parameters(method)}, not {params} ({why})")
    sources = _module_sources(klass)
    problems += [f"WebSocketServerProtocol.{name} is no longer set ({why})"
                 for name, why in STATE.items() if not _sets(klass, name, sources)]
    problems += [f"WebSocketServerProtocol.{name} is no longer set (handshake "
                 "state released once a session opens)"
                 for name in HANDSHAKE_STATE if not _sets(klass, name, sources)]
    deflate = _module_sources(PerMessageDeflate)
    problems += [f"PerMessageDeflate.{name} is no longer set ({why})"
                 for name, why in DEFLATE_STATE.items()
                 if not _sets(PerMessageDeflate, name, deflate)]
    if problems:
        raise ImportError("securews was verified against other Autobahn internals: "
                          + "; ".join(problems) + ". Install the Autobahn setup.cfg "
                          "allows, or verify and update securews/wire/_autobahn.py.")


_check()


# -- the opening handshake's state ----------------------------------------------


def release_handshake_state(protocol: Any) -> None:
    """Drop Autobahn's copies of the opening handshake (the request head,
    with any credential in it, parsed several ways) from an open session."""
    for name in HANDSHAKE_STATE:
        if name in vars(protocol):
            setattr(protocol, name, None)


# -- the permessage-deflate extension of one connection -------------------------


def per_message_compress(protocol: Any) -> Any:
    """The negotiated permessage-compress extension, or ``None``."""
    return getattr(protocol, "_perMessageCompress", None)


def replace_per_message_compress(protocol: Any, old: Any, new: Any) -> None:
    """Use ``new`` where Autobahn negotiated ``old``: for the frames it
    inflates and in the list of extensions in use."""
    in_use: list[Any] = protocol.websocket_extensions_in_use
    protocol.websocket_extensions_in_use = [new if ext is old else ext
                                            for ext in in_use]
    protocol._perMessageCompress = new


def deflate_in_use(extension: PerMessageDeflate) -> bool:
    """Whether a message is under way (the extension holds zlib state)."""
    return extension._decompressor is not None or extension._compressor is not None


def deflate_is_server(extension: PerMessageDeflate) -> bool:
    return bool(extension._is_server)


def pending_compressed_octets(protocol: Any) -> int:
    """
    Octets of the current compressed data frame that Autobahn has already
    added to ``message_data_total_length`` but not yet inflated.
    """
    if not getattr(protocol, "_isMessageCompressed", False):
        return 0
    frame = getattr(protocol, "current_frame", None)
    masker = getattr(protocol, "current_frame_masker", None)
    if frame is None or masker is None or frame.opcode > 7:
        return 0
    return max(0, int(frame.length) - int(masker.pointer()))
