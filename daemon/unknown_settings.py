"""Refusing `PIVOTAL_SYNC_*` variables that name no setting.

A typo is otherwise silent: `PIVOTAL_SYNC_KAFKA_TOPPIC=orders` leaves the daemon consuming the
default topic. So start-up stops (exit 2) naming the variable and the closest known name.

Not everything under the prefix is ours to refuse:
- `PIVOTAL_SYNC_TEST_*` belongs to the test suite (tests/fixtures/): its processes pass their
  environment on to the daemons they start.
- Kubernetes service links: for a Service named `pivotal-sync` (the chart's default name)
  every pod in the namespace gets `PIVOTAL_SYNC_SERVICE_HOST`, `PIVOTAL_SYNC_PORT=tcp://…` and
  so on, unless the pod sets `enableServiceLinks: false` (the chart does; other manifests may
  not).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping

RESERVED_PREFIXES = ("PIVOTAL_SYNC_TEST_",)
# <SERVICE>_SERVICE_HOST, <SERVICE>_SERVICE_PORT[_<PORT NAME>], <SERVICE>_PORT_<n>_<PROTO>[_…]
_SERVICE_LINK = re.compile(
    r"_SERVICE_HOST$|_SERVICE_PORT(_[A-Z0-9_]+)?$|_PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?$"
)
# <SERVICE>_PORT=tcp://10.0.0.1:9000: only with such a value, or a typo of HTTP_PORT would pass.
_SERVICE_LINK_PORT = re.compile(r"_PORT$")
_SERVICE_LINK_PORT_VALUE = re.compile(r"^(tcp|udp|sctp)://")


def unknown_variables(environ: Mapping[str, str], prefix: str, known: Collection[str]) -> list[str]:
    """The variables under `prefix` that are neither a setting nor someone else's, sorted."""
    return sorted(
        name
        for name, value in environ.items()
        if name.startswith(prefix) and name not in known and not _foreign(name, value)
    )


def _foreign(name: str, value: str) -> bool:
    if name.startswith(RESERVED_PREFIXES) or _SERVICE_LINK.search(name):
        return True
    return bool(_SERVICE_LINK_PORT.search(name) and _SERVICE_LINK_PORT_VALUE.match(value))


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name a typo most likely meant, if any is close enough."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None
