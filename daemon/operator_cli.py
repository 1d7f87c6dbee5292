"""Operator subcommands (being written): import, dead-letters, replay, status."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(commands: Any) -> None:  # argparse's subparsers action has no public type
    """Register the operator subcommands on the `pivotal-sync` parser."""
    _ = argparse
