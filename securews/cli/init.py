"""
``securews init DIR``: a first production configuration that passes
``securews check`` once a certificate is in place, with secrets made for
it and nothing reused: a cookie secret, a JWT key pair, the admin
listener's token, optionally a self-signed certificate for a staging box.

Every file is created new (never overwritten, so a second run cannot
destroy secrets in use) with mode 0600 in a directory of mode 0700; the
secrets are not printed.  The settings file is commented and names every
file by its absolute path.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import sys
import tomllib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from securews.cli.token import PRIVATE_KEY_NAME
from securews.rules.config import ConfigError, from_mapping
from securews.rules.origin import OriginError, parse_allow_list
from securews.service.dev import LOOPBACK_NAMES, private_folder_problem, self_signed

__all__ = ["CONFIG_NAME", "InitError", "run_init", "write_setup"]

CONFIG_NAME = "securews.toml"
COOKIE_SECRET_NAME = "cookie-secret"  # noqa: S105 (a file name)
PUBLIC_KEY_NAME = "jwt-public.pem"
ADMIN_TOKEN_NAME = "admin-token"  # noqa: S105 (a file name)
_SELF_SIGNED_VALIDITY = datetime.timedelta(days=90)

_TEMPLATE = """\
# securews settings, written by `securews init` on {date}.
#   check:  securews check --config {config}
#   run:    twistd -n securews --config {config}
#           (conf/securews.service runs exactly that under systemd)
# Settings not written here keep their defaults: conf/securews.toml in the
# source lists every one with its meaning.  An unknown key, a wrong type or
# an out-of-range value stops the server before it listens.

[server]
# Where to listen: a Twisted endpoint (tcp:, tcp6:, unix: or systemd:).
# A port below 1024 needs root or CAP_NET_BIND_SERVICE (the unit grants it).
listen = {listen}
# The WebSocket URL path, and the application: "echo" or
# "package.module:ProtocolClass" (a securews.SecureServerProtocol subclass).
path = "/ws"
app = "echo"

[tls]
# The certificate (PEM, the full chain, leaf first) and its unencrypted
# private key, readable by the server's user only.  Checked at start: key
# match, expiry, RSA >= 2048 bits.
cert = {cert}
key = {key}
# Lowest TLS version: "1.2" or "1.3".
min_version = "1.2"

[log]
# "-" is standard output (the journal under systemd; a daemon needs a file).
# format = "json" writes one JSON object per line.
format = "text"
file = "-"

[origin]
# The web pages allowed to open WebSockets here: a browser sends the page's
# origin, and attaches the site's cookies whatever page asks (Cross-Site
# WebSocket Hijacking).  "https://app.example.com", "https://*.example.com"
# (subdomains); empty: every browser page is refused (403).
allowed = {origins}
# Accept handshakes without an Origin header: native programs, never
# browsers.  Leave false unless such clients must connect.
allow_missing = false

[auth]
# How a handshake proves who it is, tried in this order: a single-use
# ticket (a page gets one with POST /tickets, authenticated by its cookie
# or a JWT), a JWT (?token= or Authorization: Bearer), the session cookie.
methods = ["ticket", "jwt", "cookie"]

[auth.jwt]
# Tokens signed with {private} (the private half: give it to whatever
# issues tokens, or use `securews token` to try things; the server never
# needs it).  securews verifies them with the public half.
algorithms = ["ES256"]
key_file = {public}
# Tokens must carry "aud": "securews" (and, if set, this "iss").
audience = "securews"
issuer = ""

[auth.cookie]
# Your web application's session cookie: an HS256 JWT with sub, iat and exp
# claims, signed with this secret.  The secret is the file's bytes, minus
# one trailing newline; share the file with the application.
name = "session"
mode = "signed"
secret_file = {secret}

[admin]
# The operators' plain-HTTP listener: GET /metrics (Prometheus), /healthz,
# /readyz; loopback only unless allow_non_loopback = true.  With the token
# below, POST /revoke {{"principal": "alice"}} ends alice's sessions (4401)
# and refuses her credentials, and POST /publish {{"channel", "data"}}
# pushes to a channel ("Authorization: Bearer" and the file's first line).
listen = {admin_listen}
token_file = {admin_token}

# Several nodes acting as one (shared tickets, limits and revocations;
# README, "Scaling out"): uncomment and point every node at one Redis >= 7.0
# with maxmemory-policy noeviction.
# [cluster]
# redis_url = "rediss://securews@redis.internal:6380/0"
# password_file = "/etc/securews/redis-password"
"""

_NEXT = """\
Wrote {config}
  and, mode 0600: {secret} (cookie secret), {public} and {private} (JWT key pair),
  {admin_token} (the admin listener's token){tls}
Next:
{steps}"""


class InitError(Exception):
    """Why the files cannot be written (one line)."""


def _quoted(value: object) -> str:
    """A TOML basic string or array of strings (JSON's escapes are TOML's)."""
    return json.dumps(value)


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``, mode 0600; never replace a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InitError(f"{path} exists; securews init never overwrites (choose "
                        "another directory)") from None
    except OSError as e:
        raise InitError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_setup(directory: Path, *, listen: str, origins: list[str],
                self_signed_for: list[str] | None,
                now: datetime.datetime,
                admin_listen: str = "tcp:9100:interface=127.0.0.1") -> dict[str, Path]:
    """
    Write the configuration and its secrets into ``directory``.

    :param admin_listen: ``admin.listen``; ``""`` for no admin listener.
    :param self_signed_for: names for a self-signed certificate, or
        ``None`` to leave ``tls/fullchain.pem`` and ``tls/privkey.pem`` to
        the operator.
    :returns: the files, by role.
    :raises InitError: when a file exists or cannot be created, or an
        argument would make settings the server refuses.
    """
    try:
        parse_allow_list(origins)
    except OriginError as e:
        raise InitError(f"--origin {e}") from None
    directory = directory.absolute()
    tls = directory / "tls"
    paths = {
        "config": directory / CONFIG_NAME,
        "secret": directory / COOKIE_SECRET_NAME,
        "public": directory / PUBLIC_KEY_NAME,
        "private": directory / PRIVATE_KEY_NAME,
        "admin_token": directory / ADMIN_TOKEN_NAME,
        "cert": tls / ("cert.pem" if self_signed_for is not None else "fullchain.pem"),
        "key": tls / ("key.pem" if self_signed_for is not None else "privkey.pem"),
    }
    text = _TEMPLATE.format(
        date=f"{now:%Y-%m-%d}", listen=_quoted(listen), origins=_quoted(origins),
        admin_listen=_quoted(admin_listen),
        **{name: _quoted(str(path)) for name, path in paths.items()})
    try:
        from_mapping(tomllib.loads(text))
    except ConfigError as e:
        raise InitError(str(e.problems[0])) from None
    existing = [p for p in paths.values() if p.exists()]
    if existing:
        raise InitError(f"{existing[0]} exists; securews init never overwrites "
                        "(choose another directory)")
    for folder in (directory, tls):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            loose = private_folder_problem(folder)
        except OSError as e:
            raise InitError(f"cannot create {folder}: {e.strerror}") from None
        if loose is not None:
            raise InitError(f"{loose}: the keys and secrets would be kept there "
                            "(choose another directory)")
    jwt_key = ec.generate_private_key(ec.SECP256R1())
    _write_new(paths["secret"], (secrets.token_urlsafe(48) + "\n").encode("ascii"))
    _write_new(paths["admin_token"],
               (secrets.token_urlsafe(32) + "\n").encode("ascii"))
    _write_new(paths["private"], jwt_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    _write_new(paths["public"], jwt_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    if self_signed_for is not None:
        cert, key = self_signed(self_signed_for, common_name="securews (self-signed)",
                                now=now, validity=_SELF_SIGNED_VALIDITY)
        _write_new(paths["key"], key)
        _write_new(paths["cert"], cert)
    _write_new(paths["config"], text.encode("utf-8"))
    return paths


def _next_steps(paths: dict[str, Path], self_signed_for: list[str] | None,
                origins: list[str]) -> str:
    config = paths["config"]
    steps = []
    if self_signed_for is None:
        steps.append(f"put the certificate (full chain) at {paths['cert']} and its "
                     f"key at {paths['key']}")
    if not origins:
        steps.append(f"list your web application's origin in origin.allowed of "
                     f"{config}")
    steps += [f"securews check --config {config}",
              f"twistd -n securews --config {config}   (or conf/securews.service)",
              f"securews token --config {config} --sub alice   (a test token)"]
    tls = "" if self_signed_for is None else (
        f", {paths['cert']} and {paths['key']} (self-signed for "
        f"{', '.join(self_signed_for)}; browsers will not trust it)")
    return _NEXT.format(config=config, secret=paths["secret"], public=paths["public"],
                        private=paths["private"], admin_token=paths["admin_token"],
                        tls=tls,
                        steps="\n".join(f"  {n}. {s}" for n, s in
                                        enumerate(steps, 1)))


def run_init(args: argparse.Namespace) -> int:
    """``securews init``: the next steps on standard output, exit 0; else
    one line on standard error, exit 2."""
    names = None
    if args.self_signed:
        names = list(args.host) or list(LOOPBACK_NAMES)
    elif args.host:
        sys.stderr.write("securews: error: --host applies to --self-signed only "
                         "(see: securews init --help)\n")
        return 2
    try:
        paths = write_setup(Path(args.directory), listen=args.listen,
                            admin_listen=args.admin_listen,
                            origins=list(args.origin), self_signed_for=names,
                            now=datetime.datetime.now(datetime.UTC))
    except InitError as e:
        sys.stderr.write(f"securews: error: {e}\n")
        return 2
    sys.stdout.write(_next_steps(paths, names, list(args.origin)) + "\n")
    return 0
