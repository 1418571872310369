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
from tests.support.redis import RedisServer

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


def test_the_admin_token_and_a_cluster_s_files_are_checked(tmp_path: Path,
                                                           certs: CertFiles) -> None:
    """A short admin token, an unreadable engine password and a CA file that
    is not PEM: each one line, the engine not asked before they are right."""
    token = tmp_path / "admin-token"
    token.write_text("short\n")
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    config = make_config(
        server={"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
        tls={"cert": str(certs.cert), "key": str(certs.key)},
        origin={"allowed": ["https://app.example.com"]}, auth={"methods": []},
        admin={"listen": f"tcp:{free_port()}:interface=127.0.0.1",
               "token_file": str(token)},
        cluster={"redis_url": "rediss://127.0.0.1:1/0",
                 "password_file": str(tmp_path / "missing"),
                 "ca_file": str(not_pem)})
    report = check_config(config, MemoryReactor(), now=NOW)
    assert keys(report) == ["admin.token_file", "cluster.password_file",
                            "cluster.ca_file"]
    assert "at least 16 characters" in str(report.problems[0])
    assert "not a PEM certificate" in str(report.problems[2])


def test_a_cluster_engine_is_asked_as_the_node_asks_it(
    redis_server: RedisServer, certs: CertFiles
) -> None:
    """A usable engine passes; one that cannot be reached is a warning (the
    node would start, refusing handshakes until it can), not a problem."""
    settings = dict(
        server={"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
        tls={"cert": str(certs.cert), "key": str(certs.key)},
        origin={"allowed": ["https://app.example.com"]}, auth={"methods": []})
    reachable = make_config(**settings, cluster={"redis_url": redis_server.url()})
    report = check_config(reachable, MemoryReactor(), now=NOW)
    assert (report.problems, [w.key for w in report.warnings]) == (
        (), ["auth.methods"])
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        unreachable = make_config(
            **settings, cluster={"redis_url": f"redis://127.0.0.1:{port}/0"})
        report = check_config(unreachable, MemoryReactor(), now=NOW)
    assert report.problems == ()
    assert [w.key for w in report.warnings] == ["auth.methods", "cluster.redis_url"]
    assert "cannot be reached now" in str(report.warnings[1])


def test_an_admin_token_without_the_admin_listener_is_a_warning(
    tmp_path: Path, certs: CertFiles
) -> None:
    token = tmp_path / "admin-token"
    token.write_text("a-long-enough-admin-token\n")
    config = make_config(
        server={"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
        tls={"cert": str(certs.cert), "key": str(certs.key)},
        origin={"allowed": ["https://app.example.com"]}, auth={"methods": []},
        admin={"token_file": str(token)})
    report = check_config(config, MemoryReactor(), now=NOW)
    assert report.problems == ()
    assert [w.key for w in report.warnings] == ["auth.methods", "admin.token_file"]
