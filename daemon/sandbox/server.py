"""`pivotal-sync sandbox`: the flags, and uvicorn serving the app until SIGTERM or SIGINT.

Prints exactly one line on stdout once listening, `sandbox listening on http://HOST:PORT` (the
real port when --port 0), so launchers such as `testing.running_sandbox` can read the URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Generator

import uvicorn

from daemon.sandbox.app import create_app
from daemon.sandbox.config import WINDOW_SECONDS, KeySpec, SandboxConfig

STARTUP_POLL_SECONDS = 0.01
GRACEFUL_SHUTDOWN_SECONDS = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sandbox's flags; each (assumed) choice of docs/pivotal-api.md section 8 has one."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on")
    add("--port", type=int, default=8080, help="port to listen on; 0 picks a free one")
    add("--window-seconds", type=float, default=WINDOW_SECONDS, help="sliding window length")
    add(
        "--key",
        action="append",
        default=[],
        metavar="KEY[:LIMIT|:paid][@WORKSPACE]",
        help="an API key (repeatable); default limit 60 live, 30 for pivotal_test_ keys",
    )
    add("--admin-token", default=None, help="require Bearer TOKEN on /_sandbox/*")
    add("--count-rejected-429", action="store_true", help="a 429 uses the window (item 15)")
    add("--no-count-4xx", action="store_true", help="4xx answers do not use the window")
    add("--no-count-replays", action="store_true", help="idempotent replays are free")
    add("--metadata-merge", choices=["replace", "merge"], default="replace")
    add("--idempotency-hash", choices=["raw", "json"], default="raw")
    add("--idempotency-ttl-seconds", type=float, default=24 * 3600.0)
    add("--email-scope", choices=["customer", "workspace"], default="customer")
    add("--derived-slug-collision", choices=["conflict", "suffix"], default="conflict")
    add("--clamp-limit", action="store_true", help="limit > 100 is clamped instead of a 400")
    add("--unsupported-method-status", type=int, choices=[404, 405], default=405)
    add("--allow-reopen-completed", action="store_true", help="completed is not terminal")
    add("--exclusive-primary-contact", action="store_true", help="is_primary demotes others")
    add("--default-customer-status", default="onboarding")
    add("--contact-required", default="name", help="comma-separated required contact fields")
    add("--max-body-bytes", type=int, default=1024 * 1024)
    add("--request-log-size", type=int, default=10_000)
    add("--error-code", action="append", default=[], metavar="OLD=NEW", help="rename a code")
    add("--error-rate", type=float, default=0.0, help="fraction of requests answered 5xx")
    add("--error-status", type=int, choices=[500, 503], default=500)
    add("--latency-ms", type=float, default=0.0)
    add("--latency-jitter-ms", type=float, default=0.0)
    add("--drop-rate", type=float, default=0.0, help="fraction of connections aborted")
    add("--fault-seed", type=int, default=None)


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    keys = tuple(KeySpec.parse(text) for text in args.key)
    faults = {
        "error_rate": args.error_rate,
        "error_status": args.error_status,
        "latency_ms": args.latency_ms,
        "latency_jitter_ms": args.latency_jitter_ms,
        "drop_rate": args.drop_rate,
        "seed": args.fault_seed,
    }
    renames = dict(pair.split("=", 1) for pair in args.error_code)
    config = SandboxConfig(
        window_seconds=args.window_seconds,
        admin_token=args.admin_token,
        count_rejected_429=args.count_rejected_429,
        count_4xx=not args.no_count_4xx,
        count_replays=not args.no_count_replays,
        metadata_merge=args.metadata_merge,
        idempotency_hash=args.idempotency_hash,
        idempotency_ttl_seconds=args.idempotency_ttl_seconds,
        email_scope=args.email_scope,
        derived_slug_collision=args.derived_slug_collision,
        clamp_limit=args.clamp_limit,
        unsupported_method_status=args.unsupported_method_status,
        allow_reopen_completed=args.allow_reopen_completed,
        exclusive_primary_contact=args.exclusive_primary_contact,
        default_customer_status=args.default_customer_status,
        contact_required_fields=tuple(filter(None, args.contact_required.split(","))),
        max_body_bytes=args.max_body_bytes,
        request_log_size=args.request_log_size,
        error_codes=renames,
        faults=faults,
    )
    return config.replace(keys=keys) if keys else config


class _Server(uvicorn.Server):
    """uvicorn, minus re-raising the captured signal after shutdown (we exit 0 instead)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


async def _serve(server: _Server, sock: socket.socket) -> None:
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn has no event
        await asyncio.sleep(STARTUP_POLL_SECONDS)
    if server.started:
        host, port = sock.getsockname()[:2]
        print(f"sandbox listening on http://{host}:{port}", flush=True)
    await serving


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"pivotal-sync sandbox: {exc}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    uvicorn_config = uvicorn.Config(
        create_app(config),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = _Server(uvicorn_config)
    import uvloop  # noqa: PLC0415 - only the real server needs it

    uvloop.run(_serve(server, sock))
    return 0
