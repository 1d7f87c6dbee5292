"""Operator commands, one module per command: its arguments, its run, its rendering.

    importing     `import`: a CSV / JSON Lines file of customers → events on the topic
    dead_letters  `dead-letters list|show|retry|purge`: parked events, redriven through the daemon
    replay        `replay`: a time slice of the topic delivered again
    status        `status`: lag, quota, outcomes, dead letters, last checkpoint
    mapping       `mapping check|preview`: validate a mapping file, preview what a record becomes
    common        what they share: exit codes, time arguments, progress bars, running

None goes around the daemon: what a tool sends back goes through the topic the daemon consumes,
paced by the same limiter, ordered in the same lane, checkpointed like the first time. The work
is imported lazily by each command so `pivotal-sync --help` stays fast.
"""

from __future__ import annotations

from typing import Any


def add_commands(commands: Any) -> None:  # argparse's subparsers action has no public type
    """Register the operator subcommands on the `pivotal-sync` parser."""
    from daemon.tools import dead_letters, importing, mapping, replay, status  # noqa: PLC0415

    for tool in (importing, dead_letters, replay, status, mapping):
        tool.add_parser(commands)
