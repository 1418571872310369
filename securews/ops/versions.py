"""
What securews runs on, for ``securews version``, ``twistd securews
--version`` and the startup banner: the first thing a bug report needs.

Distribution versions are read from the installed metadata, so nothing is
imported for them (Autobahn stays behind the wire layer); OpenSSL's is the
library pyOpenSSL is linked against, which is the one that serves TLS.
"""

from __future__ import annotations

import platform
from importlib import metadata

from OpenSSL import SSL

from securews._version import __version__

__all__ = ["versions", "versions_line"]

_DISTRIBUTIONS = (("Twisted", "twisted"), ("Autobahn", "autobahn"),
                  ("pyOpenSSL", "pyopenssl"), ("cryptography", "cryptography"))


def _installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _openssl() -> str:
    text = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")
    return text.removeprefix("OpenSSL ")


def versions() -> tuple[tuple[str, str], ...]:
    """``(name, version)`` of securews and what it runs on, in that order."""
    return (("securews", __version__),
            *((name, _installed(dist)) for name, dist in _DISTRIBUTIONS),
            ("OpenSSL", _openssl()),
            ("Python", platform.python_version()))


def versions_line() -> str:
    """``securews 1.0 (Twisted 24.7.0, ...)``: one line for logs."""
    (_, ours), *rest = versions()
    return f"securews {ours} (" + ", ".join(f"{n} {v}" for n, v in rest) + ")"
