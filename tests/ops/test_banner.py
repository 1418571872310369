"""The startup banner: what is enforced, on what, and nothing secret."""

from __future__ import annotations

import io
import json
from pathlib import Path

from twisted.logger import LogEvent

from securews import __version__
from securews.ops.banner import banner, log_banner
from securews.ops.logs import make_observer
from securews.ops.versions import versions
from securews.rules.settings import LogSettings
from securews.testing import make_config


def test_the_banner_lists_what_is_enforced(tmp_path: Path) -> None:
    secret = tmp_path / "cookie-secret"
    secret.write_text("the-cookie-secret-itself-0123456789abcdef\n")
    config = make_config(
        server={"listen": "tcp:443", "trusted_proxies": ["10.0.0.5"],
                "proxy_protocol": True},
        tls={"cert": "/etc/securews/fullchain.pem", "key": "/etc/securews/key.pem",
             "min_version": "1.3"},
        origin={"allowed": ["https://app.example.com"]},
        auth={"methods": ["jwt", "cookie"],
              "cookie": {"secret_file": str(secret)}},
        admin={"listen": "tcp:9100:interface=127.0.0.1"})
    text = banner(config, "wss://example.com:443/ws")
    lines = text.split("\n  ")
    assert lines[0].startswith(f"securews {__version__} (Twisted ")
    assert lines[1:] == [
        "listening: wss://example.com:443/ws (tcp:443)",
        "TLS: 1.3 or newer; certificate /etc/securews/fullchain.pem",
        "auth: jwt, cookie",
        "Origins: https://app.example.com; requests without Origin refused",
        "limits: 10000 sessions, 20 per client, 20 per principal; connect 5/s "
        "(burst 20) per client; messages 65536 B, frames 65536 B, 50 frames/s per "
        "session; idle 300 s, lifetime 86400 s",
        "proxies: 10.0.0.5/32 (client address from the PROXY protocol)",
        "admin: tcp:9100:interface=127.0.0.1 (/metrics, /healthz, /readyz)",
        "dev mode: off",
    ]
    assert "the-cookie-secret-itself" not in text


def test_the_banner_is_one_info_event_and_one_json_line(
    events: list[LogEvent]
) -> None:
    config = make_config(tls={"cert": "c.pem", "key": "k.pem"}, auth={"methods": []})
    log_banner(config, "wss://127.0.0.1:8443/ws")
    (event,) = [e for e in events if e.get("event") == "startup"]
    assert event["log_level"].name == "info"
    out = io.StringIO()
    make_observer(LogSettings(format="json"), out)(event)
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "startup"
    assert "auth: none: every handshake is refused" in record["message"]


def test_versions_name_securews_first() -> None:
    names = [name for name, _ in versions()]
    assert names == ["securews", "Twisted", "Autobahn", "pyOpenSSL", "cryptography",
                     "OpenSSL", "Python"]
