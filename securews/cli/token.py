"""
``securews token``: a JWT the configured server accepts, for trying a
production configuration before an identity provider is wired in.

The server only ever holds the public half of an asymmetric key
(``auth.jwt.key_file`` refuses private keys), so the token is signed with
the private half: ``--key``, or the ``jwt-private.pem`` that ``securews
init`` writes beside the public key.  With an HMAC algorithm the key file
is the shared secret itself.  The token is then verified by the server's
own code (:func:`securews.auth.jwt.verify_token`, with the configured
issuer, audience and leeway), so a token this prints is one the server
takes; printing it is the command's purpose, and nothing else goes to
standard output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from securews.auth.interfaces import AuthenticationFailed
from securews.auth.jwt import load_jwt_key, read_secret, verify_token
from securews.rules.config import Config, ConfigError, load

__all__ = ["PRIVATE_KEY_NAME", "mint_token", "run_token"]

#: The private key ``securews init`` writes beside ``auth.jwt.key_file``.
PRIVATE_KEY_NAME = "jwt-private.pem"
_KEY = "auth.jwt.key_file"
_RESERVED = ("sub", "iat", "exp")
#: The longest-lived token the command mints (a year): a test token,
#: never a standing credential.
MAX_TTL = 366 * 86400
_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class TokenError(Exception):
    """A problem with the command's own arguments (one line)."""


def _private_key(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TokenError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise TokenError(f"{path}: not an unencrypted PEM private key") from None


def _algorithm(key: Any, algorithms: tuple[str, ...]) -> str:
    """The first configured algorithm that fits ``key``."""
    if isinstance(key, bytes):
        fitting = [a for a in algorithms if a.startswith("HS")]
    elif isinstance(key, rsa.RSAPrivateKey):
        fitting = [a for a in algorithms if a[:2] in ("RS", "PS")]
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        fitting = [a for a in algorithms if a == _CURVES.get(key.curve.name)]
    elif isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        fitting = [a for a in algorithms if a == "EdDSA"]
    else:
        fitting = []
    if not fitting:
        raise TokenError(f"the signing key fits none of auth.jwt.algorithms "
                         f"({', '.join(algorithms)})")
    return fitting[0]


def _signing_key(config: Config, key_path: str | None) -> Any:
    settings = config.auth.jwt
    hmac = all(a.startswith("HS") for a in settings.algorithms)
    if key_path is not None:
        if hmac:
            return read_secret(key_path, key="--key")
        return _private_key(Path(key_path))
    if settings.jwks_url or not settings.key_file:
        raise TokenError("auth.jwt takes keys from jwks_url: pass --key (and "
                         "--kid) with a private key whose public half it lists")
    if hmac:
        return read_secret(settings.key_file, key=_KEY)
    beside = Path(settings.key_file).with_name(PRIVATE_KEY_NAME)
    if not beside.exists():
        raise TokenError(f"{settings.key_file} is a public key and {beside} does "
                         "not exist: pass --key with the private key")
    return _private_key(beside)


def mint_token(config: Config, *, sub: str, ttl: float,
               claims: dict[str, Any] | None = None, key_path: str | None = None,
               kid: str | None = None, now: float | None = None) -> str:
    """
    A token for ``sub`` valid ``ttl`` seconds, checked as the server checks.

    :raises TokenError: for arguments that cannot make an accepted token.
    :raises ConfigError: for an unreadable or unfit key file.
    """
    settings = config.auth.jwt
    if "jwt" not in config.auth.methods:
        raise ConfigError('does not list "jwt": the server would take no token',
                          key="auth.methods")
    if not sub:
        raise TokenError("--sub must not be empty")
    if not 1 <= ttl <= MAX_TTL:
        raise TokenError(f"--ttl must be from 1 to {MAX_TTL} seconds")
    extra = dict(claims or {})
    if reserved := [name for name in _RESERVED if name in extra]:
        raise TokenError(f"--claims must not set {', '.join(reserved)} (use --sub "
                         "and --ttl)")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"sub": sub, "iat": issued,
                               "exp": issued + math.ceil(ttl)}
    if settings.issuer:
        payload["iss"] = settings.issuer
    if settings.audience:
        payload["aud"] = settings.audience
    payload.update(extra)
    key = _signing_key(config, key_path)
    token = jwt.encode(payload, key, algorithm=_algorithm(key, settings.algorithms),
                       headers={"kid": kid} if kid else None)
    if settings.key_file and not settings.jwks_url:
        try:
            verify_token(token, load_jwt_key(settings), now=float(issued),
                         leeway=settings.leeway, issuer=settings.issuer,
                         audience=settings.audience)
        except AuthenticationFailed as e:
            hint = " (does the signing key match auth.jwt.key_file?)" if (
                e.reason in ("bad_signature", "unknown_key")) else ""
            raise TokenError(f"the server would refuse this token: {e.reason}"
                             f"{hint}") from None
    return token


def run_token(args: argparse.Namespace) -> int:
    """``securews token``: the token on standard output, exit 0; else one
    line on standard error, exit 2."""
    try:
        claims = json.loads(args.claims)
    except ValueError:
        claims = None
    try:
        if not isinstance(claims, dict):
            raise TokenError("--claims must be a JSON object")
        config = load(args.config)
        token = mint_token(config, sub=args.sub, ttl=args.ttl, claims=claims,
                           key_path=args.key, kid=args.kid)
    except ConfigError as e:
        for problem in e.problems:
            sys.stderr.write(f"securews: error: {problem.at(args.config)}\n")
        return 2
    except TokenError as e:
        sys.stderr.write(f"securews: error: {e}\n")
        return 2
    sys.stdout.write(token + "\n")
    return 0
