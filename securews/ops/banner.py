"""
The startup banner: one INFO event, once listening, saying what this
server enforces (TLS floor, authentication, Origins, the main limits, the
admin listener, a cluster's engine, channels) and on what it runs, so
that an operator reading the log (or a bug report) sees the effective
configuration without opening a file.

It shows settings only: paths, names and numbers.  Never a secret: no key,
token or file content is read here.
"""

from __future__ import annotations

from twisted.logger import Logger

from securews.ops.versions import versions_line
from securews.rules.config import Config

__all__ = ["banner", "log_banner"]

_log = Logger(namespace="securews.service")


def _auth(config: Config) -> str:
    methods = config.auth.methods
    if not methods:
        return "none: every handshake is refused (auth.methods = [])"
    return ", ".join(methods)


def _origins(config: Config) -> str:
    entries = config.origin.allowed.entries
    allowed = ", ".join(entries) if entries else "none (every browser page is refused)"
    missing = "allowed" if config.origin.allow_missing or config.dev else "refused"
    return f"{allowed}; requests without Origin {missing}"


def _tls(config: Config) -> str:
    if not config.tls.enabled:
        proxies = ", ".join(str(n) for n in config.server.trusted_proxies)
        return f"off: plaintext from the trusted proxies ({proxies}) only"
    mutual = "; client certificates required" if config.tls.client_ca else ""
    return f"{config.tls.min_version} or newer; certificate {config.tls.cert}{mutual}"


def _limits(config: Config) -> str:
    limits, rates = config.limits, config.ratelimit
    return (f"{config.server.max_connections} sessions, "
            f"{rates.connections_per_ip} per client, "
            f"{rates.sessions_per_principal} per principal; connect "
            f"{rates.connect_rate:g}/s (burst {rates.connect_burst}) per client; "
            f"messages {limits.max_message_size} B, frames {limits.max_frame_size} B, "
            f"{rates.messages_per_second:g} frames/s per session; "
            f"idle {limits.idle_timeout:g} s, lifetime {limits.max_lifetime:g} s")


def _cluster(config: Config) -> str:
    cluster = config.cluster
    node = f"node {cluster.node_id}, " if cluster.node_id else ""
    return (f"{cluster.engine} ({node}lease {cluster.lease:g} s, engine calls "
            f"within {cluster.timeout:g} s; shared tickets, limits, revocations)")


def banner(config: Config, url: str) -> str:
    """
    The banner's text: a first line, then one line per topic.

    :param url: where the server listens, as a client would write it.
    """
    lines = [
        f"{versions_line()} serving {config.server.app!r}",
        f"listening: {url} ({config.server.listen})",
        f"TLS: {_tls(config)}",
        f"auth: {_auth(config)}",
        f"Origins: {_origins(config)}",
        f"limits: {_limits(config)}",
    ]
    if config.server.trusted_proxies:
        kind = "PROXY protocol" if config.server.proxy_protocol else (
            "X-Forwarded-For" if config.reads_forwarded_for else "TCP peer")
        lines.append(f"proxies: {', '.join(map(str, config.server.trusted_proxies))}"
                     f" (client address from the {kind})")
    if config.admin.listen:
        actions = ", POST /revoke, /publish" if config.admin.token_file else ""
        lines.append(f"admin: {config.admin.listen} (/metrics, /healthz, /readyz"
                     f"{actions})")
    if config.cluster.enabled:
        lines.append(f"cluster: {_cluster(config)}")
    if config.server.app == "channels":
        channels = config.channels
        lines.append(f"channels: {channels.max_subscriptions} per session, "
                     f"history {channels.history_size} messages for "
                     f"{channels.history_ttl:g} s")
    lines.append("dev mode: ON, NOT FOR PRODUCTION" if config.dev else "dev mode: off")
    return "\n  ".join(lines)


def log_banner(config: Config, url: str) -> None:
    """Emit the banner (``event = "startup"``, INFO)."""
    _log.info("{banner}", banner=banner(config, url), event="startup")
