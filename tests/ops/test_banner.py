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


def test_the_banner_names_the_cluster_and_channels_never_a_password(
    tmp_path: Path
) -> None:
    """A node of a cluster says which engine (not its password), the admin
    listener its state-changing endpoints, the channels app its bounds."""
    password = tmp_path / "redis-password"
    password.write_text("the-engine-password-itself\n")
    token = tmp_path / "admin-token"
    token.write_text("the-admin-token-itself-0123456789\n")
    config = make_config(
        server={"app": "channels"}, messages={"format": "json"},
        tls={"cert": "c.pem", "key": "k.pem"}, auth={"methods": []},
        admin={"listen": "tcp:9100:interface=127.0.0.1", "token_file": str(token)},
        cluster={"redis_url": "rediss://securews@redis.internal:6380/2",
                 "password_file": str(password), "node_id": "ws-1"})
    lines = banner(config, "wss://example.com:443/ws").split("\n  ")
    assert lines[-4:-1] == [
        "admin: tcp:9100:interface=127.0.0.1 (/metrics, /healthz, /readyz, "
        "POST /revoke, /publish)",
        "cluster: rediss://securews@redis.internal:6380/2 (node ws-1, lease 10 s, "
        "engine calls within 0.25 s; shared tickets, limits, revocations)",
        "channels: 64 per session, history 100 messages for 300 s",
    ]
    text = "\n".join(lines)
    assert "the-engine-password-itself" not in text
    assert "the-admin-token-itself" not in text


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
