"""
Keys, JWKS documents and tokens for the JWKS tests (test_auth_jwks.py,
test_auth_jwks_e2e.py): real keys from ``cryptography``, real JWTs from
PyJWT.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["EC_A", "EC_B", "RSA_A", "RSA_B", "RSA_WEAK", "document", "jwk",
           "material", "token"]

RSA_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_B = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_WEAK = rsa.generate_private_key(public_exponent=65537, key_size=1024)
EC_A = ec.generate_private_key(ec.SECP256R1())
EC_B = ec.generate_private_key(ec.SECP256R1())


def jwk(pair: Any, kid: str | None, *, private: bool = False,
        **extra: Any) -> dict[str, Any]:
    """The public JWK of key ``pair`` (the private one, with ``d``, if asked)."""
    make = RSAAlgorithm if isinstance(pair, rsa.RSAPrivateKey) else ECAlgorithm
    key = pair if private else pair.public_key()
    entry: dict[str, Any] = dict(make.to_jwk(key, as_dict=True))
    if kid is not None:
        entry["kid"] = kid
    entry.update(extra)
    return entry


def document(*entries: Any) -> bytes:
    return json.dumps({"keys": list(entries)}).encode()


def material(*entries: dict[str, Any]) -> list[str]:
    """The key parameters of JWKs: text that must never reach a log or error."""
    return [str(e[name]) for e in entries for name in ("n", "x", "y", "d", "k")
            if name in e and len(str(e[name])) >= 16]


def token(private: Any, kid: str | None, *, now: float | None = None,
          sub: str = "alice", algorithm: str | None = None) -> str:
    """A JWT for ``sub``, valid for five minutes from ``now``."""
    issued = int(time.time() if now is None else now)
    if algorithm is None:
        algorithm = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode({"sub": sub, "iat": issued, "exp": issued + 300}, private,
                      algorithm=algorithm, headers=headers)
