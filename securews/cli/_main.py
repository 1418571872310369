"""
``securews COMMAND``: the command line around the server.

Exit status: 0 when the command did what it was asked; 1 when a client
session failed (``securews client``); 2 for a bad command line or a bad
configuration, each problem one line on standard error, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from securews.rules.config import ConfigError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_DESCRIPTION = """\
The securews command line. Run the server with twistd:
  twistd -n securews --dev                       try it (https://127.0.0.1:8443/)
  twistd -n securews --config FILE               production
"""

_EPILOG = """\
first production setup:
  securews init /etc/securews --origin https://app.example.com
  (put the certificate and key where it says), then
  securews check --config /etc/securews/securews.toml
  twistd -n securews --config /etc/securews/securews.toml

exit status: 0 done; 1 a client session failed; 2 a bad command line or
configuration (one line per problem on standard error)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line and a hint."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"securews: error: {message} (see: {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _version(args: argparse.Namespace) -> int:
    from securews.ops.versions import versions

    for name, version in versions():
        sys.stdout.write(f"{name} {version}\n")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from securews.rules.config import load
    from securews.service.check import check_config, print_report

    try:
        config = load(args.config)
    except ConfigError as e:
        for problem in e.problems:
            sys.stderr.write(f"securews: error: {problem.at(args.config)}\n")
        return EXIT_USAGE
    report = check_config(config, reactor, bind=not args.no_bind)
    return print_report(report, args.config, out=sys.stdout, err=sys.stderr)


def _init(args: argparse.Namespace) -> int:
    from securews.cli.init import run_init

    return run_init(args)


def _token(args: argparse.Namespace) -> int:
    from securews.cli.token import run_token

    return run_token(args)


def _client(args: argparse.Namespace) -> int:
    from securews.cli.client import run_client

    return run_client(args)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="securews", description=_DESCRIPTION, epilog=_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true",
                        help="print the versions of securews and what it runs on")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=_Parser)

    check = commands.add_parser(
        "check", help="check a configuration without starting the server",
        description="Load and verify everything the server would at start "
        "(settings, certificate and key, their match and expiry, JWT keys, the "
        "cookie secret, the message schema, the listen addresses, which are "
        "bound and let go), and print every problem, one line each. Exit 0 when "
        "the server would start, 2 otherwise.")
    check.add_argument("--config", "-c", required=True, metavar="FILE",
                       help="the TOML settings file")
    check.add_argument("--no-bind", action="store_true",
                       help="do not try the listen addresses (the server runs "
                       "and holds them)")
    check.set_defaults(run=_check)

    init = commands.add_parser(
        "init", help="write a production configuration with fresh secrets",
        description="Write DIR/securews.toml, commented, with a fresh cookie "
        "secret, JWT key pair and admin token beside it (every file mode "
        "0600), and print the next steps. Existing files are never "
        "overwritten.")
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--listen", default="tcp6:443:interface=\\:\\:",
                      help="server.listen (default: %(default)s, every address, "
                      "port 443)")
    init.add_argument("--admin-listen", default="tcp:9100:interface=127.0.0.1",
                      metavar="ENDPOINT",
                      help="admin.listen, the operators' listener (/metrics, "
                      "/readyz, POST /revoke with the admin-token written beside "
                      "the settings; default: %(default)s; \"\" for none)")
    init.add_argument("--origin", action="append", default=[], metavar="ORIGIN",
                      help="a web page origin allowed to connect, e.g. "
                      "https://app.example.com (repeatable)")
    init.add_argument("--self-signed", action="store_true",
                      help="also make a self-signed certificate (a staging box; "
                      "browsers will not trust it)")
    init.add_argument("--host", action="append", default=[], metavar="NAME",
                      help="with --self-signed: a host name or address it is "
                      "for (repeatable; default localhost, 127.0.0.1, ::1)")
    init.set_defaults(run=_init)

    token = commands.add_parser(
        "token", help="mint a JWT the configured server accepts (for tests)",
        description="Sign a JWT with the private half of auth.jwt.key_file (the "
        "jwt-private.pem that securews init writes beside it, or --key), check "
        "it with the server's own verification, and print it.")
    token.add_argument("--config", "-c", required=True, metavar="FILE")
    token.add_argument("--sub", required=True, metavar="ID",
                       help="the principal's id (the sub claim)")
    token.add_argument("--ttl", type=float, default=3600.0, metavar="SECONDS",
                       help="lifetime (default: %(default)g)")
    token.add_argument("--claims", metavar="JSON", default="{}",
                       help="more claims, as a JSON object")
    token.add_argument("--key", metavar="FILE",
                       help="the signing key (PEM private key, or the HMAC "
                       "secret file); default: beside auth.jwt.key_file")
    token.add_argument("--kid", help="a key id for the token's header (JWKS)")
    token.set_defaults(run=_token)

    client = commands.add_parser(
        "client", help="talk to a WebSocket server from the terminal",
        description="Connect, then send each line read from standard input as "
        "a text message and print each message received. End of input closes "
        "the session. The server's certificate is always verified. Exit 0 after "
        "a clean close, 1 when the connection, TLS or the handshake failed.")
    client.add_argument("url", metavar="URL", help="wss://host:port/path")
    client.add_argument("--cafile", metavar="FILE",
                        help="PEM certificate(s) to trust (e.g. the dev "
                        "certificate); default: the system's trust store")
    client.add_argument("--token", metavar="TOKEN",
                        help="sent as Authorization: Bearer (default: "
                        "$SECUREWS_TOKEN; an argument is visible to local users)")
    client.add_argument("--origin", metavar="ORIGIN",
                        help="sent as the Origin header, as a page would")
    client.set_defaults(run=_client)

    version = commands.add_parser("version", help="print the versions of securews, "
                                  "Twisted, Autobahn and OpenSSL")
    version.set_defaults(run=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``securews`` with ``argv`` (default: the process's arguments)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        return _version(args)
    if args.command is None:
        parser.error("a COMMAND is required")
    status: int = args.run(args)
    return status
