"""The chaos suite: the real daemon against faults and hostile input, each scenario ending in
the exact expected Pivotal state, and a table of what happened.

`make chaos` runs every scenario (PIVOTAL_SYNC_TEST_CHAOS=full) and prints the table; the
normal test run collects only the short form (the modules not named `test_long_*`). Faults come
from tests/fixtures/fault_proxy.py (network) and the sandbox's /_sandbox/faults (the API's
answers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.support import FULL
from tests.chaos.table import ROWS, Row, render_table
from tests.e2e.conftest import scenario  # noqa: F401 - the e2e scenario fixture, shared

# The long scenarios run under `make chaos` only: the normal suite's time budget is shared.
collect_ignore_glob = [] if FULL else ["test_long_*.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every chaos scenario drives the real process: `-m "not e2e"` leaves them out too.
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def chaos_table() -> list[Row]:
    """Append a Row: it is printed in the table at the end of the run."""
    return ROWS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.section("chaos table")
        terminalreporter.write_line(render_table(ROWS))
