"""`facewatch admin serve` (the admin API), `facewatch admin token` and `facewatch audit`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from worker.cli.common import add_model_flags, emit, settings_from_args

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `admin` (serve, token) and `audit` to the top-level parser."""
    admin = commands.add_parser(
        "admin",
        help="the admin API: serve it, make tokens",
        description="The authenticated HTTP API for the watchlist (docs/admin_api.md).",
    )
    subs = admin.add_subparsers(dest="admin_command", metavar="SUBCOMMAND", required=True)
    serve = subs.add_parser("serve", help="serve the admin API (config section admin)")
    serve.add_argument("--store", dest="watchlist_store", metavar="PATH", help="watchlist SQLite file")
    serve.add_argument("--host", help="listen address (admin.host)")
    serve.add_argument("--port", type=int, help="port (admin.port)")
    add_model_flags(serve)
    serve.set_defaults(handler=run_serve)
    token = subs.add_parser(
        "token",
        help="make a token: prints the token (once) and the hashed line for admin.tokens / admin.tokens_file",
    )
    token.add_argument("name", metavar="NAME", help="who uses it (the audit log's 'who')")
    token.add_argument(
        "--scopes", default="read", help="read, write or admin (each includes the ones before), e.g. write"
    )
    token.set_defaults(handler=run_token)

    audit = commands.add_parser(
        "audit",
        help="show the audit log of watchlist changes and identify calls",
        description="Entries oldest first, as JSON lines with --json. Times are UTC, ISO 8601; "
        "--since and --until take a prefix such as 2026-01-31 or 2026-01-31T12.",
    )
    audit.add_argument("--store", dest="watchlist_store", metavar="PATH", help="watchlist SQLite file")
    audit.add_argument("--since", help="entries at or after this UTC time")
    audit.add_argument("--until", help="entries before this UTC time")
    audit.add_argument("--who", help="a token name, or user:NAME for CLI commands")
    audit.add_argument("--action", help="enroll, import, update, remove, restore, identify, export, purge, denied...")
    audit.add_argument("--identity", help="an identity id")
    audit.add_argument("--limit", type=int, help="the newest N entries only")
    audit.add_argument("--json", action="store_true", help="JSON lines on stdout")
    audit.set_defaults(handler=run_audit)


def run_token(args: argparse.Namespace) -> int:
    from worker.admin.tokens import new_token

    value, line = new_token(args.name, args.scopes)
    print(f"token (give it to {args.name}; it is not stored and cannot be shown again):\n  {value}")
    print(f"line for admin.tokens_file (or FACEWATCH_ADMIN__TOKENS):\n  {line}")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from worker.admin.audit import AuditLog

    log_file = AuditLog.from_settings(settings_from_args(args))
    entries = log_file.query(args.since, args.until, args.who, args.action, args.identity, args.limit)
    for entry in entries:
        if args.json:
            emit(entry)
        else:
            target = f" {entry['identity']}" if entry.get("identity") else ""
            extra = {
                k: v for k, v in entry.items() if k not in ("time", "who", "from", "action", "identity", "outcome")
            }
            shown = " ".join(f"{k}={v}" for k, v in extra.items())
            print(f"{entry['time']}  {entry['who']} ({entry['from']})  {entry['action']}{target}: {entry['outcome']}"
                  f"{'  ' + shown if shown else ''}")  # fmt: skip
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from worker.admin.audit import AuditLog
    from worker.admin.server import AdminServer
    from worker.admin.service import WatchlistService

    settings = settings_from_args(args)
    if args.host is not None:
        settings.admin.host = args.host
    if args.port is not None:
        settings.admin.port = args.port
    audit = AuditLog.from_settings(settings)
    audit.expire()
    service = WatchlistService(settings, audit, notify=lambda message: log.warning("%s", message))
    server = AdminServer(service, settings.admin)
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.stop, daemon=True).start()  # shutdown() waits for serve_forever

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"admin API on {server.url} (store {settings.watchlist.store})", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0
