"""The worked examples of docs/events.md and docs/formats.md: each `mapping preview` shown
there prints exactly the output shown under it, so the documentation cannot drift from the code.

Regenerate the outputs after a deliberate change with
`python -m tests.unit.formats.test_docs_examples --write`, then read the diff.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon import cli

DOCS = Path(__file__).resolve().parents[3] / "docs"
PAGES = (DOCS / "events.md", DOCS / "formats.md")
_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PROMPT = "$ pivotal-sync "


@dataclass(frozen=True)
class Example:
    mapping: str
    record: str
    command: str
    shown: str
    page: Path
    span: tuple[int, int]  # where the console block's body is in the page

    def run(self) -> str:
        """The command's output, run in-process with the example's files."""
        with tempfile.TemporaryDirectory() as directory:
            mapping = Path(directory) / "mapping.yaml"
            mapping.write_text(self.mapping)
            words = shlex.split(self.command.removeprefix(PROMPT).split(" < ")[0])
            args = [str(mapping) if word == "mapping.yaml" else word for word in words]
            out = io.StringIO()
            stdin, sys.stdin = sys.stdin, io.StringIO(self.record)
            try:
                with contextlib.redirect_stdout(out):
                    cli.main(args)
            finally:
                sys.stdin = stdin
        return out.getvalue()


def examples(page: Path) -> list[Example]:
    found, mapping, record = [], "", ""
    for match in _FENCE.finditer(page.read_text()):
        info, body = match.group(1).strip(), match.group(2)
        if info == "yaml title=mapping.yaml":
            mapping = body
        elif info == "json title=record.json":
            record = body
        elif info == "console" and body.startswith(PROMPT + "mapping preview"):
            command, _, shown = body.partition("\n")
            found.append(Example(mapping, record, command, shown, page, match.span(2)))
    return found


DOC_EXAMPLES = [example for page in PAGES for example in examples(page)]


def test_the_event_contract_has_an_example_per_format() -> None:
    """docs/events.md shows structured and binary CloudEvents, Debezium and a mapped shape (a
    parse slip would silently hide them all)."""
    contract = [e for e in DOC_EXAMPLES if e.page.name == "events.md"]
    assert len(contract) == 4
    shown = "\n".join(e.shown for e in contract)
    for needle in ("id: evt_7f3c2a", "id: evt-301", "id: debezium:", "id: hs-88121"):
        assert needle in shown
    assert len([e for e in DOC_EXAMPLES if e.page.name == "formats.md"]) >= 6


@pytest.mark.parametrize("example", DOC_EXAMPLES, ids=lambda e: f"{e.page.name}:{e.span[0]}")
def test_preview_output_matches_the_doc(example: Example) -> None:
    """What `mapping preview` prints is what the doc shows."""
    assert example.run() == example.shown


def write() -> None:
    for page in PAGES:
        text = page.read_text()
        for example in reversed(examples(page)):
            start, end = example.span
            text = text[:start] + example.command + "\n" + example.run() + text[end:]
        page.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
