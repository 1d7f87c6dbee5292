"""The running version: the installed distribution's metadata, so pyproject.toml's `version` is
the one source (the image tag and the chart's appVersion are stamped from it at release)."""

from __future__ import annotations

import platform
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version

DISTRIBUTION = "pivotal-sync"
# A source tree that was never installed (python -m daemon.cli from a bare checkout) has no
# metadata; say so rather than guess.
UNKNOWN = "0+unknown"


@cache
def version() -> str:
    try:
        return distribution_version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN


def python_version() -> str:
    return platform.python_version()
