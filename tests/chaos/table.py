"""The chaos table: one row per scenario, printed at the end of the run (and kept in
docs/reliability.md)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Row:
    """One line of the chaos table."""

    scenario: str
    fault: str
    events: int
    lost: int
    duplicates: int
    dead_letters: Counter[str] = field(default_factory=Counter)
    catch_up_seconds: float | None = None
    exit_code: int | None = None

    def cells(self) -> list[str]:
        letters = ", ".join(f"{k} {v}" for k, v in sorted(self.dead_letters.items())) or "-"
        seconds = "-" if self.catch_up_seconds is None else f"{self.catch_up_seconds:.1f}"
        code = "-" if self.exit_code is None else str(self.exit_code)
        return [
            self.scenario,
            self.fault,
            str(self.events),
            str(self.lost),
            str(self.duplicates),
            letters,
            seconds,
            code,
        ]


HEADINGS = [
    "scenario",
    "fault",
    "events",
    "lost",
    "duplicates",
    "dead letters",
    "catch-up s",
    "exit",
]
# Module state: one table per pytest run, filled by the scenarios, printed by conftest.
ROWS: list[Row] = []


def render_table(rows: list[Row]) -> str:
    """The rows as a Markdown table (the form docs/reliability.md keeps)."""
    lines = ["| " + " | ".join(HEADINGS) + " |", "|" + "---|" * len(HEADINGS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)
