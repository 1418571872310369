"""
Reading and checking the JWT verification key (``auth.jwt.key_file``).

Run once at startup.  The file's content decides what it is (PEM public
key or certificate, JWKS, or an HMAC secret), and the configured
algorithms must fit it: HS* only with a secret, RS*/PS* only with RSA,
ES* only with the matching curve, EdDSA only with Edwards keys, and
never HS* beside an asymmetric algorithm (algorithm confusion).  Private
keys are refused: the server verifies, it never signs.

A JWKS fetched from ``auth.jwt.jwks_url`` goes through the same key
parser (:func:`parse_fetched_jwks`), but a provider's set is read
tolerantly: keys that are not for us are skipped and counted instead of
stopping the server, and symmetric keys are never taken from a URL.
"""

from __future__ import annotations

import json
from collections.abc import Container, Mapping, Sequence
from types import MappingProxyType
from typing import Protocol, TypeAlias, cast

import attrs
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.utils import is_pem_format, is_ssh_key

from securews.auth.interfaces import AuthenticationFailed
from securews.rules.config import ConfigError
from securews.rules.settings import JWTSettings

__all__ = ["SKIP_CATEGORIES", "FetchedKeySet", "JWKSError", "JWTKey", "KeySource",
           "VerificationKey", "VerifyKey", "load_jwt_key", "parse_fetched_jwks",
           "read_secret"]

VerifyKey: TypeAlias = (bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                        | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)

_MAX_KEY_FILE = 1 << 20
_KEY = "auth.jwt.key_file"

#: Which key kinds each algorithm can be verified with.
_NEEDS: Mapping[str, tuple[str, ...]] = {
    **{f"HS{n}": ("HMAC",) for n in (256, 384, 512)},
    **{f"{p}{n}": ("RSA",) for p in ("RS", "PS") for n in (256, 384, 512)},
    "ES256": ("EC P-256",), "ES384": ("EC P-384",), "ES512": ("EC P-521",),
    "EdDSA": ("Ed25519", "Ed448"),
}
#: RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
_HMAC_MIN = {"HS256": 32, "HS384": 48, "HS512": 64}
_CURVES = {"secp256r1": "EC P-256", "secp384r1": "EC P-384",
           "secp521r1": "EC P-521"}


@attrs.frozen(eq=False)
class VerificationKey:
    """One key and the configured algorithms it may verify."""

    key: VerifyKey = attrs.field(repr=False)
    algorithms: tuple[str, ...]


def _frozen(value: Mapping[str, VerificationKey]) -> Mapping[str, VerificationKey]:
    return MappingProxyType(dict(value))


def _frozen_counts(value: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(value))


@attrs.frozen(eq=False)
class JWTKey:
    """
    What verifies tokens: one key, or a JWKS whose keys a token names by
    ``kid``.
    """

    single: VerificationKey | None
    by_kid: Mapping[str, VerificationKey] = attrs.field(factory=dict,
                                                        converter=_frozen)

    def select(self, token: str) -> VerificationKey:
        """
        The key for ``token``.

        :raises AuthenticationFailed: ``"unknown_key"`` when a JWKS has no
            key for the token's ``kid`` (or it has none).
        """
        if self.single is not None:
            return self.single
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise AuthenticationFailed("malformed") from None
        found = self.by_kid.get(kid) if isinstance(kid, str) else None
        if found is None:
            raise AuthenticationFailed("unknown_key")
        return found


class KeySource(Protocol):
    """
    What :func:`~securews.auth.jwt.verify_token` asks for a token's key: a
    :class:`JWTKey` read once, or a JWKS kept fresh from a URL
    (:class:`~securews.auth.jwks.JWKSKeys`).
    """

    def select(self, token: str) -> VerificationKey:
        """
        The key for ``token``, without waiting for anything.

        :raises AuthenticationFailed: ``"malformed"`` or ``"unknown_key"``.
        """
        ...


def _read(path: str, key: str) -> bytes:
    if not path:
        raise ConfigError("must name a key file", key=key)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or 'error'}",
                          key=key) from None
    if len(data) > _MAX_KEY_FILE:
        raise ConfigError(f"{path} is larger than 1 MiB", key=key)
    return data


def _check_secret(data: bytes, key: str, minimum: int) -> bytes:
    if is_pem_format(data) or is_ssh_key(data):
        raise ConfigError("holds a PEM or SSH key, not an HMAC secret", key=key)
    if len(data) < minimum:
        raise ConfigError(f"the HMAC secret must be at least {minimum} bytes, "
                          f"got {len(data)}", key=key)
    return data


def _secret(data: bytes, key: str, minimum: int) -> bytes:
    for newline in (b"\r\n", b"\n"):
        if data.endswith(newline):
            return _check_secret(data[: -len(newline)], key, minimum)
    return _check_secret(data, key, minimum)


def read_secret(path: str, *, key: str, minimum: int = 32) -> bytes:
    """
    Read an HMAC secret file, without one trailing newline.

    :param key: the setting, for :class:`ConfigError`.
    :raises ConfigError: when unreadable, shorter than ``minimum`` bytes,
        or holding a PEM/SSH key instead.
    """
    return _secret(_read(path, key), key, minimum)


def _kind(key: object) -> str:
    """What kind of key this is, in the words of :data:`_NEEDS`."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _CURVES.get(key.curve.name, f"EC {key.curve.name}")
    kinds = ((bytes, "HMAC"), (rsa.RSAPublicKey, "RSA"),
             (ed25519.Ed25519PublicKey, "Ed25519"), (ed448.Ed448PublicKey, "Ed448"))
    return next((kind for cls, kind in kinds if isinstance(key, cls)), "unsupported")


class _Unusable(Exception):
    """
    Why a key cannot verify tokens: ``message`` for an operator's key file
    (a :class:`ConfigError`), ``category`` for a fetched set, which skips
    the key and counts it (:data:`SKIP_CATEGORIES`).
    """

    def __init__(self, message: str, category: str) -> None:
        super().__init__(message)
        self.message = message
        self.category = category


#: Why a key of a fetched JWKS was skipped, in the words its log line uses.
SKIP_CATEGORIES = frozenset({
    "not_an_object", "not_for_signatures", "symmetric", "no_kid", "duplicate_kid",
    "private", "unusable", "weak", "algorithm"})


def _usable(key: object, what: str) -> VerifyKey:
    if _kind(key) == "unsupported":
        raise _Unusable(f"{what} is not an HMAC, RSA, EC or EdDSA key", "unusable")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise _Unusable(f"{what} is a {key.key_size}-bit RSA key; at least "
                        "2048 bits are needed", "weak")
    return cast(VerifyKey, key)


def _fitting(key: VerifyKey, algorithms: Sequence[str]) -> tuple[str, ...]:
    return tuple(a for a in algorithms if _kind(key) in _NEEDS[a])


def _pem_key(data: bytes, algorithms: Sequence[str]) -> JWTKey:
    if b"PRIVATE KEY-----" in data:
        raise ConfigError("holds a private key; give the public key or a "
                          "certificate", key=_KEY)
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            public: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError("is not a readable PEM public key or certificate",
                          key=_KEY) from None
    try:
        key = _usable(public, "the key file")
    except _Unusable as e:
        raise ConfigError(e.message, key=_KEY) from None
    for name in algorithms:
        if name not in _fitting(key, algorithms):
            raise ConfigError(
                f"{name} needs an {' or '.join(_NEEDS[name])} key, but the "
                f"key file holds an {_kind(key)} key", key=_KEY)
    return JWTKey(single=VerificationKey(key, tuple(algorithms)))


def _jwk(entry: object, n: int, algorithms: Sequence[str],
         taken: Container[str], *, fetched: bool) -> tuple[str, VerificationKey]:
    """
    One JWKS entry as ``(kid, key)``: the one parser behind a key file's
    JWKS and a fetched one.

    A key verifies the configured algorithms that fit its kind; its
    ``alg``, when present, narrows that to itself and never adds one.

    :param taken: the kids seen so far.
    :param fetched: from ``jwks_url``, where symmetric (``oct``) keys are
        refused: a shared secret published at a URL is no secret, and a
        remote set must never be able to turn HS* on.
    :raises _Unusable: when the entry cannot verify any accepted token.
    """
    if not isinstance(entry, dict):
        raise _Unusable(f"JWKS key #{n} is not an object", "not_an_object")
    ops = entry.get("key_ops")
    if entry.get("use", "sig") != "sig" or (
            ops is not None and (not isinstance(ops, list) or "verify" not in ops)):
        # Encryption keys never verify a signature.
        raise _Unusable(f"JWKS key #{n} is not a signature key", "not_for_signatures")
    if fetched and entry.get("kty") == "oct":
        raise _Unusable(f"JWKS key #{n} is a symmetric key", "symmetric")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid or kid in taken:
        raise _Unusable(f'JWKS key #{n} needs a unique "kid"',
                        "duplicate_kid" if isinstance(kid, str) and kid in taken
                        else "no_kid")
    if entry.get("kty") != "oct" and "d" in entry:
        raise _Unusable(f"JWKS key #{n} is a private key", "private")
    hint = "EdDSA" if entry.get("kty") == "OKP" and "alg" not in entry else None
    try:
        parsed = jwt.PyJWK(entry, algorithm=hint).key
    except Exception:  # whatever PyJWT makes of a malformed JWK
        raise _Unusable(f"JWKS key #{n} is not a usable JWK", "unusable") from None
    key = _usable(parsed, f"JWKS key #{n}")
    fits = [a for a in _fitting(key, algorithms) if entry.get("alg", a) == a]
    if not fits:
        raise _Unusable(f"JWKS key #{n} ({_kind(key)}) fits none of "
                        "auth.jwt.algorithms", "algorithm")
    if isinstance(key, bytes):
        _check_secret(key, _KEY, max(_HMAC_MIN[a] for a in fits))
    return kid, VerificationKey(key, tuple(fits))


def _jwks(data: bytes, algorithms: Sequence[str]) -> JWTKey:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise ConfigError("is neither PEM nor valid JWKS JSON", key=_KEY) from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError('a JWKS needs a non-empty "keys" list', key=_KEY)
    by_kid: dict[str, VerificationKey] = {}
    for n, entry in enumerate(entries, 1):
        try:
            kid, key = _jwk(entry, n, algorithms, by_kid, fetched=False)
        except _Unusable as e:
            if e.category == "not_for_signatures":
                continue
            raise ConfigError(e.message, key=_KEY) from None
        by_kid[kid] = key
    if not by_kid:
        raise ConfigError("the JWKS has no signature keys", key=_KEY)
    for name in algorithms:
        if not any(name in v.algorithms for v in by_kid.values()):
            raise ConfigError(f"no JWKS key can verify {name}", key=_KEY)
    return JWTKey(single=None, by_kid=by_kid)


class JWKSError(Exception):
    """
    Why a fetched JWKS document cannot be used, in one line that holds no
    key material.
    """


@attrs.frozen
class FetchedKeySet:
    """
    The usable keys of a fetched JWKS, and how many of each kind of
    skipped key it had (keys of :data:`SKIP_CATEGORIES`).
    """

    keys: JWTKey
    skipped: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen_counts)

    def describe(self) -> str:
        """``"3 keys (1 skipped: 1 symmetric)"``: for a log line."""
        usable = f"{len(self.keys.by_kid)} key{'s' * (len(self.keys.by_kid) != 1)}"
        if not self.skipped:
            return usable
        total = sum(self.skipped.values())
        detail = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return f"{usable} ({total} skipped: {detail})"


def parse_fetched_jwks(data: bytes, algorithms: Sequence[str], *,
                       max_keys: int) -> FetchedKeySet:
    """
    The usable keys of a JWKS fetched from ``auth.jwt.jwks_url``.

    Tolerant per key, strict in effect: a provider publishes keys for
    many consumers, so a key that is not for us (encryption, another
    algorithm, ``alg`` outside the allow-list, another curve) or not fit
    to verify (symmetric, private, weak, malformed, no or a repeated
    ``kid``) is skipped and counted, never used; only a set left with no
    usable key at all is an error.

    :param max_keys: more entries than this is an error (before any is
        parsed), so the work per fetch is bounded.
    :raises JWKSError: when the document is not a JWKS, is too long, or
        has no usable key.
    """
    if any(a.startswith("HS") for a in algorithms):
        raise JWKSError("HMAC algorithms never take keys from a URL")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise JWKSError("the answer is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JWKSError('the answer is not a JWKS (no "keys" list)')
    if len(entries) > max_keys:
        raise JWKSError(f"the JWKS has {len(entries)} keys, more than {max_keys}")
    by_kid: dict[str, VerificationKey] = {}
    skipped: dict[str, int] = {}
    for n, entry in enumerate(entries, 1):
        try:
            kid, key = _jwk(entry, n, algorithms, by_kid, fetched=True)
        except _Unusable as e:
            skipped[e.category] = skipped.get(e.category, 0) + 1
            continue
        by_kid[kid] = key
    result = FetchedKeySet(JWTKey(single=None, by_kid=by_kid), skipped)
    if not by_kid:
        raise JWKSError(f"no usable key: {result.describe()}")
    return result


def load_jwt_key(settings: JWTSettings) -> JWTKey:
    """
    Read ``settings.key_file`` once, at startup, and check it against
    ``settings.algorithms``.

    The kind is decided by content: PEM (a public key or a certificate),
    a JWKS (a JSON object), else the raw bytes are an HMAC secret (a
    binary secret that happens to start with ``{`` and is valid UTF-8 is
    taken for JSON: regenerate it).

    :raises ConfigError: for a missing, unreadable or unparseable file, a
        private key, a weak key, an algorithm the key cannot verify, or a
        mix of HMAC and public-key algorithms (a public key must never be
        usable as an HMAC secret).
    """
    algorithms = settings.algorithms
    hmac_only = [a for a in algorithms if a.startswith("HS")]
    if hmac_only and len(hmac_only) != len(algorithms):
        raise ConfigError("must not mix HMAC (HS*) and public-key algorithms",
                          key="auth.jwt.algorithms")
    data = _read(settings.key_file, _KEY)
    if b"-----BEGIN" in data:
        return _pem_key(data, algorithms)
    if data.lstrip()[:1] == b"{" and _is_utf8(data):
        return _jwks(data, algorithms)
    if not hmac_only:
        raise ConfigError(
            f"holds no PEM key or JWKS, so it is an HMAC secret, which "
            f"{', '.join(algorithms)} cannot use", key=_KEY)
    secret = _secret(data, _KEY, max(_HMAC_MIN[a] for a in hmac_only))
    return JWTKey(single=VerificationKey(secret, tuple(algorithms)))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

