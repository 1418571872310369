"""Bearer JWTs and signed session cookies: key loading and verification."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from securews.auth.cookie import SignedCookieAuthenticator, load_cookie_secret
from securews.auth.interfaces import (
    AuthenticationFailed,
    HandshakeRequest,
    IAuthenticator,
    Principal,
)
from securews.auth.jwt import (
    JWTAuthenticator,
    JWTKey,
    VerificationKey,
    load_jwt_key,
)
from securews.rules.config import ConfigError
from securews.rules.head import RequestHead, read_head
from securews.rules.settings import CookieSettings, JWTSettings
from tests.support.memory import result_of

NOW = 1_700_000_000
SECRET = b"0123456789abcdef0123456789abcdef-cookie"


def head(query: str = "", *headers: tuple[str, str]) -> RequestHead:
    target = f"/ws?{query}" if query else "/ws"
    lines = [f"GET {target} HTTP/1.1", "Host: ws.example",
             *(f"{name}: {value}" for name, value in headers)]
    parsed = read_head(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"),
                       max_bytes=65536, max_headers=64)
    assert isinstance(parsed, RequestHead)
    return parsed


def outcome(authenticator: Any, request_head: RequestHead) -> Any:
    """The principal (or None), or the refusal reason as a string."""
    request = HandshakeRequest(request_head, "203.0.113.5", None)
    try:
        return result_of(authenticator.authenticate(request))
    except AuthenticationFailed as e:
        return e.reason


def claims(**changes: Any) -> dict[str, Any]:
    base = {"sub": "alice", "iat": NOW, "exp": NOW + 300}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem(key: Any) -> bytes:
    public = key.public_key() if hasattr(key, "public_key") else key
    return bytes(public.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_jwt(tmp_path: Path, key_data: bytes,
             **settings: Any) -> tuple[JWTAuthenticator, Clock]:
    path = tmp_path / "key"
    path.write_bytes(key_data)
    config = JWTSettings(key_file=str(path), **settings)
    clock = Clock()
    clock.advance(NOW)
    authenticator = JWTAuthenticator(config, load_jwt_key(config), clock)
    assert verifyObject(IAuthenticator, authenticator)
    return authenticator, clock


@pytest.fixture
def rs256(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> JWTAuthenticator:
    return make_jwt(tmp_path, pem(rsa_key))[0]


def bearer(token: str) -> RequestHead:
    return head("", ("Authorization", f"bearer {token}"))


def test_rs256_token_from_query(rs256: JWTAuthenticator, rsa_key: Any) -> None:
    """A valid RS256 token in the query parameter yields its subject."""
    token = jwt.encode(claims(role="admin"), rsa_key, algorithm="RS256")
    principal = outcome(rs256, head(f"x=1&token={token}"))
    assert principal == Principal("alice", "jwt", claims(role="admin"),
                                  expires_at=NOW + 300 + 30)


def test_rs256_token_from_authorization(rs256: JWTAuthenticator,
                                        rsa_key: Any) -> None:
    """A valid RS256 bearer token in Authorization (any scheme case) is accepted."""
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert outcome(rs256, bearer(token)).id == "alice"


@pytest.mark.parametrize("request_head", [
    head(), head("other=1"), head("", ("Authorization", "Basic YTpi"))])
def test_no_token_is_no_credential(rs256: JWTAuthenticator,
                                   request_head: RequestHead) -> None:
    """Without a token (or with another Authorization scheme) the next method runs."""
    assert outcome(rs256, request_head) is None


def test_alg_none_refused(rs256: JWTAuthenticator, rsa_key: Any) -> None:
    """Unsigned tokens, and signed ones relabelled alg none, are refused."""
    unsigned = jwt.encode(claims(), "", algorithm="none")
    signed = jwt.encode(claims(), rsa_key, algorithm="RS256").split(".")
    relabelled = ".".join([b64(b'{"alg":"none","typ":"JWT"}'), *signed[1:]])
    assert outcome(rs256, head(f"token={unsigned}")) == "bad_algorithm"
    assert outcome(rs256, head(f"token={relabelled}")) == "bad_algorithm"


def test_hs256_signed_with_public_key_refused(rs256: JWTAuthenticator,
                                              rsa_key: Any) -> None:
    """HS256 with the RSA public key PEM as HMAC secret does not pass for RS256."""
    header = b64(b'{"alg":"HS256"}')
    signing_input = f"{header}.{b64(json.dumps(claims()).encode())}"
    mac = hmac.new(pem(rsa_key), signing_input.encode(), hashlib.sha256).digest()
    assert outcome(rs256, head(f"token={signing_input}.{b64(mac)}")) == "bad_algorithm"


def test_expiry_uses_clock_and_leeway(tmp_path: Path, rsa_key: Any) -> None:
    """A token is accepted until exp + leeway by the clock, refused from then on."""
    authenticator, clock = make_jwt(tmp_path, pem(rsa_key), leeway=30)
    request_head = head(f"token={jwt.encode(claims(), rsa_key, algorithm='RS256')}")
    clock.advance(300 + 29)
    assert isinstance(outcome(authenticator, request_head), Principal)
    clock.advance(1)
    assert outcome(authenticator, request_head) == "expired"


@pytest.mark.parametrize(("changes", "settings", "reason"), [
    ({"nbf": NOW + 60}, {}, "not_yet_valid"),
    ({"iat": NOW + 60}, {}, "not_yet_valid"),
    ({"aud": "other"}, {"audience": "ws"}, "bad_audience"),
    ({"aud": "ws"}, {}, "bad_audience"),
    ({}, {"audience": "ws"}, "missing_claim"),
    ({"iss": "https://evil.example"}, {"issuer": "https://idp.example"}, "bad_issuer"),
    ({}, {"issuer": "https://idp.example"}, "missing_claim"),
    ({"exp": None}, {}, "missing_claim"),
    ({"sub": None}, {}, "missing_claim"),
    ({"sub": ""}, {}, "missing_claim"),
    ({"sub": 42}, {}, "missing_claim"),
    ({"exp": "tomorrow"}, {}, "malformed"),
    ({"exp": float("inf")}, {}, "malformed"),
    ({"pad": "x" * 9000}, {}, "malformed"),
])
def test_claims_refused(tmp_path: Path, rsa_key: Any, changes: dict[str, Any],
                        settings: dict[str, Any], reason: str) -> None:
    """Bad or missing claims are refused with their fixed reason."""
    authenticator, _ = make_jwt(tmp_path, pem(rsa_key), **settings)
    token = jwt.encode(claims(**changes), rsa_key, algorithm="RS256")
    assert outcome(authenticator, head(f"token={token}")) == reason


def test_audience_and_issuer_accepted(tmp_path: Path, rsa_key: Any) -> None:
    """The configured audience may be one of several; the issuer must match."""
    authenticator, _ = make_jwt(tmp_path, pem(rsa_key), audience="ws",
                                issuer="https://idp.example")
    token = jwt.encode(claims(aud=["api", "ws"], iss="https://idp.example"),
                       rsa_key, algorithm="RS256")
    assert outcome(authenticator, head(f"token={token}")).id == "alice"


def test_signature_by_other_key_refused(rs256: JWTAuthenticator,
                                        other_rsa_key: Any) -> None:
    """A token signed by another RSA key is refused as bad_signature."""
    token = jwt.encode(claims(), other_rsa_key, algorithm="RS256")
    assert outcome(rs256, head(f"token={token}")) == "bad_signature"


def test_jwks_selects_key_by_kid(tmp_path: Path, rsa_key: Any, ec_key: Any) -> None:
    """A JWKS key is chosen by kid; unknown/missing kids and alg mismatches fail."""
    keys = [{**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r"},
            {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "e"},
            {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "x",
             "use": "enc"}]
    authenticator, _ = make_jwt(tmp_path, json.dumps({"keys": keys}).encode(),
                                algorithms=("RS256", "ES256"))

    def token(key: Any, alg: str, **header: Any) -> RequestHead:
        return head(f"token={jwt.encode(claims(), key, alg, headers=header)}")

    assert outcome(authenticator, token(rsa_key, "RS256", kid="r")).id == "alice"
    assert outcome(authenticator, token(ec_key, "ES256", kid="e")).id == "alice"
    assert outcome(authenticator, token(rsa_key, "RS256", kid="x")) == "unknown_key"
    assert outcome(authenticator, token(rsa_key, "RS256")) == "unknown_key"
    assert outcome(authenticator, token(ec_key, "ES256", kid="r")) == "bad_algorithm"


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c", "a==.b.c", "a b.c.d", "é.b.c", "x" * 9000,
    f"{b64(b'not json')}.{b64(b'{}')}.c", f"{b64(b'[1]')}.{b64(b'{}')}.c",
])
def test_malformed_tokens_refused(rs256: JWTAuthenticator, token: str) -> None:
    """Tokens that are not a compact JWS are refused as malformed."""
    assert outcome(rs256, bearer(token)) == "malformed"


def test_signed_non_object_payload_refused(rs256: JWTAuthenticator,
                                           rsa_key: Any) -> None:
    """A correctly signed payload that is not a JSON object is malformed."""
    token = jwt.PyJWS().encode(b"[1]", rsa_key, algorithm="RS256")
    assert outcome(rs256, head(f"token={token}")) == "malformed"


@pytest.mark.parametrize("request_head", [
    head("token=a.b.c&token=a.b.c"),
    head("", ("Authorization", "Bearer a.b.c"), ("Authorization", "Bearer a.b.c")),
])
def test_repeated_token_is_bad_request(rs256: JWTAuthenticator,
                                       request_head: RequestHead) -> None:
    """A repeated query parameter or Authorization header is refused outright."""
    assert outcome(rs256, request_head) == "bad_request"


@pytest.mark.parametrize(("key", "algorithm"), [
    (ec.generate_private_key(ec.SECP256R1()), "ES256"),
    (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
])
def test_ec_and_eddsa_tokens(tmp_path: Path, key: Any, algorithm: str) -> None:
    """ES256 and EdDSA tokens verify with their PEM public keys."""
    authenticator, _ = make_jwt(tmp_path, pem(key), algorithms=(algorithm,))
    token = jwt.encode(claims(), key, algorithm=algorithm)
    assert outcome(authenticator, head(f"token={token}")).id == "alice"


def test_certificate_key_file(tmp_path: Path) -> None:
    """A PEM certificate stands for its public key (trustme issues P-256)."""
    leaf = trustme.CA().issue_cert("idp.example")
    private = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    authenticator, _ = make_jwt(tmp_path, leaf.cert_chain_pems[0].bytes(),
                                algorithms=("ES256",))
    token = jwt.encode(claims(), private, algorithm="ES256")  # type: ignore[arg-type]
    assert outcome(authenticator, head(f"token={token}")).id == "alice"


def test_hmac_secret_file(tmp_path: Path) -> None:
    """An HMAC secret file loses one trailing newline and verifies HS256."""
    authenticator, _ = make_jwt(tmp_path, SECRET + b"\n", algorithms=("HS256",))
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert outcome(authenticator, head(f"token={token}")).id == "alice"


def _rsa_pem(bits: int) -> bytes:
    return pem(rsa.generate_private_key(public_exponent=65537, key_size=bits))


_PRIVATE = ec.generate_private_key(ec.SECP256R1())
_PRIVATE_PEM = _PRIVATE.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
_PRIVATE_JWK = {**ECAlgorithm.to_jwk(_PRIVATE, as_dict=True), "kid": "k"}


@pytest.mark.parametrize(("data", "settings", "says"), [
    (lambda: _rsa_pem(2048), {"algorithms": ("ES256",)}, "ES256 needs an EC P-256"),
    (lambda: _rsa_pem(1024), {}, "at least 2048 bits"),
    (lambda: SECRET, {"algorithms": ("RS256",)}, "HMAC secret, which RS256"),
    (lambda: b"too-short-secret\n", {"algorithms": ("HS256",)}, "at least 32 bytes"),
    (lambda: SECRET, {"algorithms": ("HS512",)}, "at least 64 bytes"),
    (lambda: None, {}, "cannot read"),
    (lambda: b"-----BEGIN PUBLIC KEY-----\nZ2FyYmFnZQ==\n-----END PUBLIC KEY-----\n",
     {}, "not a readable PEM"),
    (lambda: b'{"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB"}]}', {},
     "not a usable JWK"),
    (lambda: b'{"keys": ', {}, "valid JWKS JSON"),
    (lambda: _PRIVATE_PEM, {"algorithms": ("ES256",)}, "private key"),
    (lambda: json.dumps({"keys": [_PRIVATE_JWK]}).encode(), {"algorithms": ("ES256",)},
     "private key"),
])
def test_bad_key_files_refused(tmp_path: Path, data: Any, settings: dict[str, Any],
                               says: str) -> None:
    """Unusable key files and algorithm/key mismatches are one-line ConfigErrors."""
    material = data()
    path = tmp_path / "key"
    if material is not None:
        path.write_bytes(material)
    with pytest.raises(ConfigError) as e:
        load_jwt_key(JWTSettings(key_file=str(path), **settings))
    assert e.value.key == "auth.jwt.key_file"
    assert says in str(e.value)
    assert "\n" not in str(e.value)
    for line in (material or b"").decode("latin-1").splitlines():
        if len(line) >= 8 and not line.startswith("-----"):
            assert line not in str(e.value)


def test_mixed_hmac_and_public_key_algorithms_refused(tmp_path: Path) -> None:
    """HS256 next to RS256 is refused at load: a public key is no HMAC secret."""
    path = tmp_path / "key"
    path.write_bytes(_rsa_pem(2048))
    with pytest.raises(ConfigError) as e:
        load_jwt_key(JWTSettings(key_file=str(path), algorithms=("HS256", "RS256")))
    assert e.value.key == "auth.jwt.algorithms"


def test_empty_key_file_setting_refused() -> None:
    """Without key_file, loading fails instead of verifying with nothing."""
    with pytest.raises(ConfigError) as e:
        load_jwt_key(JWTSettings())
    assert e.value.key == "auth.jwt.key_file"


def make_cookie(max_age: float = 3600) -> tuple[SignedCookieAuthenticator, Clock]:
    clock = Clock()
    clock.advance(NOW)
    authenticator = SignedCookieAuthenticator(
        CookieSettings(name="session", max_age=max_age), SECRET, clock)
    assert verifyObject(IAuthenticator, authenticator)
    return authenticator, clock


def cookie(value: str, *more: str) -> RequestHead:
    return head("", *(("Cookie", text) for text in (value, *more)))


def test_signed_cookie_accepted() -> None:
    """A fresh HS256 session cookie among others yields its subject."""
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    principal = outcome(make_cookie()[0], cookie(f"theme=dark; session={token}"))
    assert principal == Principal("alice", "cookie", claims(),
                                  expires_at=principal.expires_at)


@pytest.mark.parametrize(("changes", "expires_at"), [
    ({"iat": NOW, "exp": NOW + 9999}, NOW + 60),
    ({"iat": NOW, "exp": NOW + 30}, NOW + 30),
])
def test_cookie_session_ends_at_exp_or_max_age_whichever_first(
    changes: dict[str, Any], expires_at: float
) -> None:
    """A cookie's session ends at its exp, or max_age after its iat."""
    token = jwt.encode(claims(**changes), SECRET, algorithm="HS256")
    principal = outcome(make_cookie(max_age=60)[0], cookie(f"session={token}"))
    assert principal.expires_at == expires_at
    assert principal.renew is None


def test_jwt_session_ends_at_exp_plus_leeway(tmp_path: Path, rsa_key: Any) -> None:
    """The principal says when the token stops being accepted: exp + leeway."""
    authenticator, _ = make_jwt(tmp_path, pem(rsa_key), leeway=30)
    token = jwt.encode(claims(exp=NOW + 100), rsa_key, algorithm="RS256")
    principal = outcome(authenticator, head(f"token={token}"))
    assert principal.expires_at == NOW + 130
    assert principal.renew is None


@pytest.mark.parametrize(("token", "reason"), [
    (jwt.encode(claims(), SECRET[::-1], algorithm="HS256"), "bad_signature"),
    (jwt.encode(claims(exp=NOW), SECRET, algorithm="HS256"), "expired"),
    (jwt.encode(claims(iat=NOW - 61, exp=NOW + 9999), SECRET, algorithm="HS256"),
     "expired"),
    (jwt.encode(claims(iat=None), SECRET, algorithm="HS256"), "missing_claim"),
    (jwt.encode(claims(), SECRET + SECRET, algorithm="HS512"), "bad_algorithm"),
    ("not-a-token", "malformed"),
])
def test_bad_cookies_refused(token: str, reason: str) -> None:
    """Cookies badly signed, expired, older than max_age or not HS256 are refused."""
    assert outcome(make_cookie(max_age=60)[0], cookie(f"session={token}")) == reason


@pytest.mark.parametrize("request_head", [
    head(), cookie("theme=dark"), cookie("session="), cookie("Session=x.y.z")])
def test_absent_cookie_is_no_credential(request_head: RequestHead) -> None:
    """Without a (non-empty, exactly named) session cookie the next method runs."""
    assert outcome(make_cookie()[0], request_head) is None


@pytest.mark.parametrize("request_head", [
    cookie("session=a.b.c; session=a.b.c"), cookie("session=a.b.c", "session=")])
def test_duplicate_cookie_is_bad_request(request_head: RequestHead) -> None:
    """A session cookie sent twice, in one header or two, is refused outright."""
    assert outcome(make_cookie()[0], request_head) == "bad_request"


def test_cookie_secret_file(tmp_path: Path) -> None:
    """The cookie secret loses one trailing newline; short or missing ones fail."""
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    assert load_cookie_secret(CookieSettings(secret_file=str(path))) == SECRET
    path.write_bytes(b"short\n")
    for settings in (CookieSettings(secret_file=str(path)), CookieSettings()):
        with pytest.raises(ConfigError) as e:
            load_cookie_secret(settings)
        assert e.value.key == "auth.cookie.secret_file"
        assert "short" not in str(e.value)


_HS = JWTKey(single=VerificationKey(SECRET, ("HS256",)))
_JWKS = JWTKey(single=None, by_kid={"k": VerificationKey(SECRET, ("HS256",))})
_GOOD = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "k"})
_REASONS = {"bad_request", "malformed", "bad_signature", "bad_algorithm",
            "unknown_key", "expired", "missing_claim", "not_yet_valid"}
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_token_like = st.lists(st.sampled_from([
    ".", "%2E", "=", " ", ";", "&", '"', "eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJub25lIn0",
    _GOOD, *_GOOD.split("."),
]) | st.text(_B64URL, max_size=12) | st.text(max_size=4), max_size=8).map("".join)


def _fuzz(prefixes: list[str]) -> st.SearchStrategy[str]:
    return st.text() | st.builds("".join, st.lists(
        st.sampled_from(prefixes) | _token_like, max_size=4))


def _raw_head(query: str, *headers: tuple[str, str]) -> RequestHead:
    return RequestHead("GET", "/ws", query, "HTTP/1.1", headers, 0)


@given(query=_fuzz(["token=", "&", "&token=", f"token={_GOOD}"]),
       authorization=_fuzz(["Bearer ", "bearer  ", "Basic ", f"Bearer {_GOOD}"]),
       cookie_text=_fuzz(["session=", "; ", ";session=", f"session={_GOOD}"]))
def test_arbitrary_input_only_fails_authentication(
        query: str, authorization: str, cookie_text: str) -> None:
    """Arbitrary query, Authorization and Cookie text never raise anything else."""
    clock = Clock()
    clock.advance(NOW)
    request_head = _raw_head(query, ("authorization", authorization),
                             ("cookie", cookie_text))
    authenticators: list[JWTAuthenticator | SignedCookieAuthenticator] = [
        JWTAuthenticator(JWTSettings(algorithms=("HS256",)), _HS, clock),
        JWTAuthenticator(JWTSettings(algorithms=("HS256",)), _JWKS, clock),
        SignedCookieAuthenticator(CookieSettings(), SECRET, clock),
    ]
    for authenticator in authenticators:
        try:
            found: Principal | str | None = authenticator.principal_for(request_head)
        except AuthenticationFailed as e:
            found = e.reason
        if isinstance(found, str):
            assert found in _REASONS
        else:
            assert found is None or found.claims == claims()
