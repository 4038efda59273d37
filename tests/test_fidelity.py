"""docs/fidelity.md cannot drift from sgmn.fidelity: one table row per DIFFERENCES entry with its
key and both values, and one bug line per BUG_FIXES entry."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from sgmn.fidelity import BUG_FIXES, DIFFERENCES

DOC = Path(__file__).resolve().parents[1] / "docs" / "fidelity.md"
BUGS_HEADING = "## Bugs of the official code fixed in both modes"


def yaml_value(value) -> str:
    """A value as the doc writes it: YAML scalars (true/false, 0.7, hardest)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@pytest.fixture(scope="module")
def doc() -> str:
    assert DOC.is_file(), f"{DOC} is missing"
    return DOC.read_text(encoding="utf-8")


def table_rows(doc: str) -> dict[str, list[str]]:
    """Config key -> cells of the table rows whose first cell is a `section.key`."""
    rows = {}
    for line in doc.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().strip("`") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows[cells[0]] = cells
    return rows


def section(doc: str, heading: str) -> list[str]:
    lines = doc.splitlines()
    assert heading in lines, f"docs/fidelity.md lacks the heading '{heading}'"
    out = []
    for line in lines[lines.index(heading) + 1:]:
        if line.startswith("## "):
            break
        out.append(line)
    return out


def test_every_difference_has_its_row_with_both_values(doc):
    rows = table_rows(doc)
    for d in DIFFERENCES:
        key = ".".join(d.key)
        assert key in rows, f"docs/fidelity.md has no table row for {key}"
        cells = rows[key]
        assert len(cells) == 4, f"{key}: expected 4 cells (key, paper, official, explanation), got {cells}"
        assert cells[1] == yaml_value(d.paper), f"{key}: paper value {cells[1]!r} != {yaml_value(d.paper)!r}"
        assert cells[2] == yaml_value(d.official), \
            f"{key}: official value {cells[2]!r} != {yaml_value(d.official)!r}"
        assert len(cells[3]) > 20, f"{key}: the explanation is missing"


def test_no_row_for_a_key_that_is_not_a_difference(doc):
    documented = set(table_rows(doc))
    assert documented == {".".join(d.key) for d in DIFFERENCES}


def test_one_line_per_bug_fix(doc):
    bullets = [line for line in section(doc, BUGS_HEADING) if line.startswith("- ")]
    assert len(bullets) == len(BUG_FIXES), \
        f"docs/fidelity.md lists {len(bullets)} bug fixes, sgmn.fidelity.BUG_FIXES has {len(BUG_FIXES)}"
    for bug in BUG_FIXES:   # each entry's topic (the words before its colon) names a line
        topic = bug.split(":")[0]
        assert any(line[2:].startswith(topic) for line in bullets), f"no bug line for '{topic}'"


def test_doc_explains_the_switch(doc):
    for needle in ("fidelity: paper", "fidelity: official", "null", "sgmn_official",
                   "## Other suite choices the paper leaves open"):
        assert needle in doc, needle
