"""
Development mode: a self-signed certificate and a config to try securews.

The certificate is made once in a state folder and reused, so a browser
or client told to trust it keeps trusting it; it is remade when it is
within a week of expiry.  Nothing here is for production.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from securews.rules.config import Config, ConfigError, from_mapping

__all__ = ["DEV_LISTEN", "DEV_ORIGINS", "LOOPBACK_NAMES", "default_state_dir",
           "dev_config", "ensure_certificate", "self_signed"]

DEV_LISTEN = "tcp:8443:interface=127.0.0.1"
#: Pages a developer serves from this machine, on any port: the built-in
#: page, a bundler's dev server, ``python -m http.server``.  Never ``null``
#: (``file:`` pages and sandboxed frames), which any page can forge.
DEV_ORIGINS = tuple(f"{scheme}://{host}:*" for host in ("localhost", "127.0.0.1",
                                                        "[::1]")
                    for scheme in ("http", "https"))
_VALIDITY = datetime.timedelta(days=365)
_RENEW_BEFORE = datetime.timedelta(days=7)


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/securews`` (``~/.local/state/securews``)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "securews"


#: The names a certificate for this machine's loopback carries.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def self_signed(names: Sequence[str], *, common_name: str, now: datetime.datetime,
                validity: datetime.timedelta) -> tuple[bytes, bytes]:
    """
    A self-signed ECDSA P-256 certificate for ``names`` (host names or IP
    addresses), and its key: ``(cert PEM, unencrypted PKCS#8 key PEM)``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    alternative: list[x509.GeneralName] = []
    for entry in names:
        try:
            alternative.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            alternative.append(x509.DNSName(entry))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _still_good(cert_path: Path, key_path: Path, now: datetime.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    try:
        key_mode = key_path.lstat().st_mode
    except OSError:
        return False
    # A key others may read is made again (and written 0600).
    return (stat.S_ISREG(key_mode) and not key_mode & 0o077
            and cert.not_valid_after_utc - _RENEW_BEFORE > now)


def ensure_certificate(state_dir: Path, *,
                       now: datetime.datetime) -> tuple[Path, Path]:
    """
    Return ``(cert, key)`` paths of the development certificate, making
    it first if it is missing or about to expire.
    """
    cert_path, key_path = state_dir / "dev-cert.pem", state_dir / "dev-key.pem"
    if _still_good(cert_path, key_path, now):
        return cert_path, key_path
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        loose = private_folder_problem(state_dir)
        if loose is not None:
            raise ConfigError(f"{loose}: the development key would be kept there",
                              source=str(state_dir))
        cert, key = self_signed(LOOPBACK_NAMES, common_name="securews development",
                                now=now, validity=_VALIDITY)
        _replace_private(key_path, key)
        _replace_private(cert_path, cert)
    except OSError as e:
        raise ConfigError(f"cannot write the development certificate: {e.strerror}",
                          source=str(state_dir)) from None
    return cert_path, key_path


def private_folder_problem(folder: Path) -> str | None:
    """
    Why ``folder`` may not hold secrets, or ``None``: it must be a real
    directory (not a link) of this user that no one else may write to
    (who can write to it can replace what is in it).
    """
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode):
        return f"{folder} is not a directory"
    if info.st_uid != os.geteuid():
        return f"{folder} belongs to another user"
    if info.st_mode & 0o022:
        return f"{folder} may be written by others (mode {info.st_mode & 0o777:o})"
    return None


def _replace_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file, mode 0600, that then takes ``path``'s
    place: never into an existing file (whose looser mode it would keep)
    or through a link."""
    new = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(new, path)
    except BaseException:
        new.unlink(missing_ok=True)
        raise


def dev_config(state_dir: Path, *, now: datetime.datetime,
               overrides: dict[str, dict[str, object]] | None = None) -> Config:
    """
    The settings of ``twistd securews --dev``: the loopback Origins
    (:data:`DEV_ORIGINS`) are allowed besides any ``--allow-origin``.
    """
    cert, key = ensure_certificate(state_dir, now=now)
    data: dict[str, dict[str, object]] = {
        "server": {"listen": DEV_LISTEN},
        "tls": {"cert": str(cert), "key": str(key)},
        "auth": {"methods": ["anonymous"]},
        "origin": {"allowed": list(DEV_ORIGINS)},
    }
    overrides = {section: dict(values) for section, values in (overrides or {}).items()}
    extra = overrides.get("origin", {}).get("allowed")
    if isinstance(extra, list):
        overrides["origin"]["allowed"] = [*DEV_ORIGINS, *extra]
    return from_mapping(data, source="--dev", overrides=overrides, dev=True)
