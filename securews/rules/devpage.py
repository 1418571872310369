"""
The page development mode serves at ``GET /``: the first thing a new user
opens, so that a browser shows a working WebSocket before any code is
written.

It is fixed bytes, built once per server from the WebSocket path (the
operator's setting, never the request): nothing a client sends can reach
it.  Its script and style are inline and allowed by hash in a strict
Content-Security-Policy; it loads nothing from anywhere, may not be
framed, and talks only to its own origin (``connect-src 'self'``, which
covers ``wss://`` to the same host and port).  Only
``twistd securews --dev`` ever serves it.

Pure code: text in, bytes out.
"""

from __future__ import annotations

import base64
import hashlib
import json

from securews.rules.responses import render_response

__all__ = ["PAGE_PATH", "dev_page_response"]

#: Where the page is served.
PAGE_PATH = "/"

_STYLE = """
body { font: 16px/1.45 system-ui, sans-serif; max-width: 42em; margin: 2em auto;
       padding: 0 1em; color: #111; }
code, pre, input { font-family: ui-monospace, monospace; }
#log { white-space: pre-wrap; background: #f3f3f3; padding: 1em; min-height: 6em; }
.warn { color: #8a1c00; }
"""

_SCRIPT = """
"use strict";
const path = %(path)s;
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const url = scheme + location.host + path;
const state = document.getElementById("state");
const log = document.getElementById("log");
const show = (line) => { log.textContent += line + "\\n"; };
const mark = (value) => { document.body.dataset.state = value; };
const ws = new WebSocket(url);
ws.onopen = () => {
  state.textContent = "connected to " + url;
  mark("open");
  const first = "hello, securews";
  ws.send(first);
  show("sent: " + first);
};
ws.onmessage = (event) => {
  show("echo: " + (typeof event.data === "string" ? event.data : "[binary]"));
  mark("echoed");
};
ws.onclose = (event) => {
  const why = event.reason ? " " + event.reason : "";
  state.textContent = "closed: code " + event.code + why;
  mark("closed");
};
ws.onerror = () => {
  state.textContent = "the WebSocket failed: the server's log says why";
};
document.getElementById("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = document.getElementById("text").value;
  if (ws.readyState === WebSocket.OPEN) {
    ws.send(text);
    show("sent: " + text);
  }
});
"""

_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>securews: development mode</title>
<style>%(style)s</style>
</head>
<body data-state="connecting">
<h1>securews, development mode</h1>
<p class="warn">Served only by <code>twistd securews --dev</code>: never in
production.</p>
<p>This page opens a WebSocket to the server that served it, sends a message
and shows the echo. Type below to send more.</p>
<form id="form"><input id="text" size="40" value="hello again" autocomplete="off">
<button>Send</button></form>
<p id="state">connecting&hellip;</p>
<pre id="log"></pre>
<script>%(script)s</script>
</body>
</html>
"""


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _script_literal(path: str) -> str:
    """``path`` as a JavaScript string literal that cannot end the script
    element (no ``<``, ``>`` or ``&`` survive unescaped)."""
    text = json.dumps(path)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def dev_page_response(websocket_path: str) -> bytes:
    """
    The complete ``200`` response of the development page.

    :param websocket_path: ``server.path``, which the page connects to on
        its own host and port.
    """
    script = _SCRIPT % {"path": _script_literal(websocket_path)}
    body = _HTML % {"style": _STYLE, "script": script}
    policy = "; ".join((
        "default-src 'none'",
        f"script-src {_hash(script)}",
        f"style-src {_hash(_STYLE)}",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))
    return render_response(200, (
        ("Content-Security-Policy", policy),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
    ), body.encode("utf-8"), "text/html; charset=utf-8")
