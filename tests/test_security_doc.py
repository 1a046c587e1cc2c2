"""docs/security.md names the tests that prove each check: every one of them must exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "security.md"


def named_tests(text: str) -> list[tuple[str, str]]:
    """``(file, test)`` for each ``tests/FILE.py::name`` and each following ``::name`` (same file)."""
    found = []
    for cell in re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", text):
        found.append(cell)
    out, current = [], None
    for path, name in found:
        current = path or current
        assert current is not None, f"::{name} without a file before it"
        out.append((current, name))
    return out


def test_every_test_named_in_the_threat_model_exists():
    named = named_tests(DOC.read_text())
    assert len(named) >= 40, len(named)
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not re.search(rf"^(async )?def {name}\(", (REPO / path).read_text(), re.MULTILINE)
    ]
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"


def test_every_table_row_names_a_test():
    text = DOC.read_text()
    table = text[text.index("## What each input is checked against") :]
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith(("| input", "| ---"))
    ]
    assert len(rows) >= 10
    for row in rows:
        assert "tests/" in row, row[:80]
