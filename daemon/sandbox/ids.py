"""Identifiers and timestamps in Pivotal's formats: cuid ids and ISO 8601 UTC with milliseconds."""

from __future__ import annotations

import itertools
import os
import re
import time
from datetime import UTC, datetime

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_counter = itertools.count()
_FINGERPRINT = os.getpid() % (36**4)
# Zod's `z.string().datetime()` (what Pivotal validates `cursor` with): UTC `Z` only.
_ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")


def _base36(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, rest = divmod(value, 36)
        digits.append(_BASE36[rest])
    return "".join(reversed(digits))


def new_cuid(now_ms: int) -> str:
    """A 25-character cuid (`c`, time, counter, fingerprint, randomness); never all digits."""
    random_part = int.from_bytes(os.urandom(6), "big")
    return (
        "c"
        + _base36(now_ms, 8)
        + _base36(next(_counter), 4)
        + _base36(_FINGERPRINT, 4)
        + _base36(random_part, 8)
    )


def iso_ms(epoch_ms: int) -> str:
    """`2026-05-26T17:21:09.412Z` for a Unix time in milliseconds."""
    seconds, millis = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def parse_iso_us(text: str) -> int | None:
    """Microseconds since the epoch for a Zod-valid datetime, or None when it is not one."""
    if _ISO_UTC.fullmatch(text) is None:
        return None
    main, _, fraction = text[:-1].partition(".")
    try:
        moment = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    micros = int((fraction + "000000")[:6]) if fraction else 0
    # Fractions finer than a microsecond round up so "strictly older" stays strict.
    if fraction[6:].strip("0"):
        micros += 1
    return int(moment.timestamp()) * 1_000_000 + micros
