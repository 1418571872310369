"""
securews/service/check.py in process: every problem the start would hit,
at once, from the start's own code; warnings that do not stop it.
"""

from __future__ import annotations

import datetime
import io
import socket
from pathlib import Path

import trustme
from twisted.internet.testing import MemoryReactor

from securews.rules.config import ConfigError
from securews.service.check import Report, check_config, print_report
from securews.testing import make_config
from tests.support.common import CertFiles, write_cert
from tests.support.processes import free_port

NOW = datetime.datetime.now(datetime.UTC)


def keys(report: Report) -> list[str]:
    return [p.key for p in report.problems]


def test_a_good_configuration_has_no_problem(certs: CertFiles) -> None:
    """Loopback on a free port, real certificate: nothing to report."""
    config = make_config(
        server={"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
        tls={"cert": str(certs.cert), "key": str(certs.key)},
        origin={"allowed": ["https://app.example.com"]}, auth={"methods": []})
    report = check_config(config, MemoryReactor(), now=NOW)
    assert report.problems == ()
    assert [w.key for w in report.warnings] == ["auth.methods"]


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path) -> None:
    """TLS files, a short cookie secret, a JWT key, an admin listener beyond
    loopback, an unwritable log and an unknown app: all of them."""
    short = tmp_path / "secret"
    short.write_bytes(b"too short\n")
    config = make_config(
        server={"app": "no.such.module:App"},
        tls={"cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem")},
        auth={"methods": ["jwt", "cookie"], "cookie": {"secret_file": str(short)}},
        admin={"listen": "tcp:9100:interface=0.0.0.0"},
        log={"file": str(tmp_path / "missing" / "securews.log")})
    report = check_config(config, MemoryReactor(), now=NOW)
    assert keys(report) == ["server.app", "tls.cert", "tls.key", "auth.jwt.key_file",
                            "auth.cookie.secret_file", "admin.listen", "log.file"]
    assert "at least 32 bytes" in str(report.problems[4])


def test_a_port_in_use_is_a_problem_unless_binding_is_skipped(
    certs: CertFiles
) -> None:
    """The listen address is bound and let go; --no-bind leaves it alone
    (checking the settings of a server that runs)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(
            server={"listen": f"tcp:{port}:interface=127.0.0.1"},
            tls={"cert": str(certs.cert), "key": str(certs.key)},
            origin={"allow_missing": True}, auth={"methods": []})
        report = check_config(config, MemoryReactor(), now=NOW)
        assert keys(report) == ["server.listen"]
        assert "address already in use" in str(report.problems[0])
        assert check_config(config, MemoryReactor(), bind=False,
                            now=NOW).problems == ()


def test_a_certificate_about_to_expire_is_a_warning(ca: trustme.CA,
                                                    tmp_path: Path) -> None:
    """Valid for 10 more days: the server starts, the check says when it ends."""
    soon = write_cert(ca, tmp_path / "soon",
                      not_after=NOW + datetime.timedelta(days=10))
    config = make_config(
        server={"listen": "tcp:0:interface=127.0.0.1"},
        tls={"cert": str(soon.cert), "key": str(soon.key)}, auth={"methods": []})
    report = check_config(config, MemoryReactor(), now=NOW)
    assert report.problems == ()
    assert [w.key for w in report.warnings] == ["tls.cert", "origin.allowed",
                                                "auth.methods"]
    assert "expires on" in str(report.warnings[0])


def test_the_report_prints_one_line_per_problem_and_the_status() -> None:
    """Problems and warnings on standard error, the verdict on standard output."""
    out, err = io.StringIO(), io.StringIO()
    report = Report((ConfigError("bad", key="a.b"), ConfigError("worse", key="c")),
                    (ConfigError("hm", key="d"),))
    assert print_report(report, "f.toml", out=out, err=err) == 2
    assert out.getvalue() == ""
    assert err.getvalue() == ("securews: warning: f.toml: d: hm\n"
                              "securews: error: f.toml: a.b: bad\n"
                              "securews: error: f.toml: c: worse\n")
    out = io.StringIO()
    assert print_report(Report((), ()), "f.toml", out=out, err=err) == 0
    assert out.getvalue() == "securews: f.toml: OK\n"
