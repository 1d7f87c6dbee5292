"""The `pivotal-sync` command: parses arguments, builds settings, hands over to the right room.

Subcommands import their room lazily, so `pivotal-sync --help` and `pivotal-sync sandbox` stay
fast and do not need the daemon's whole dependency graph loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from daemon import signals
from daemon.errors import ConfigError
from daemon.version import version

Handler = Callable[[argparse.Namespace], int]


def _run(args: argparse.Namespace) -> int:
    from daemon import app  # noqa: PLC0415 - lazy: keeps --help fast

    return app.main(dry_run=args.dry_run)


def _migrate(args: argparse.Namespace) -> int:
    from daemon import app  # noqa: PLC0415

    return app.migrate_main()


def _sandbox(args: argparse.Namespace) -> int:
    from daemon.sandbox import server  # noqa: PLC0415

    return server.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pivotal-sync",
        description="Mirror CRM change events from Kafka into the Pivotal API.",
        epilog="Configuration comes from the environment (PIVOTAL_API_KEY, PIVOTAL_SYNC_*).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="consume the topic and sync into Pivotal (the daemon)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="plan and log the requests that would be sent; send none, commit nothing",
    )
    run.set_defaults(handler=_run)

    migrate = commands.add_parser(
        "migrate",
        help="apply database migrations and exit",
        description="Create or upgrade the daemon's tables in PIVOTAL_SYNC_DATABASE_URL, then "
        "exit. Safe to run from several places at once: migrations run under a Postgres "
        "advisory lock, and `run` and the operator commands apply them the same way on start.",
    )
    migrate.set_defaults(handler=_migrate)

    from daemon.sandbox import server  # noqa: PLC0415 - argument definitions only

    sandbox = commands.add_parser("sandbox", help="serve the stand-in Pivotal API")
    server.add_arguments(sandbox)
    sandbox.set_defaults(handler=_sandbox)

    from daemon import tools  # noqa: PLC0415 - argument definitions only

    tools.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["run"]:
        # First thing: a SIGTERM during imports or settings must not kill the daemon by the
        # signal (daemon/signals.py). The tools keep Python's defaults (Ctrl-C interrupts).
        signals.remember_early()
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"pivotal-sync: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
