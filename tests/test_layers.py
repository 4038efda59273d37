"""The layers import only downward: data -> models -> train -> evaluate -> tables -> cli.
Checked on the source (every import statement, also inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        hits = sorted(m for m in _imports(path) if m.startswith(forbidden))
        if hits:
            bad[str(path.relative_to(REPO))] = hits
    return bad


def test_models_and_baselines_do_not_import_training_or_evaluation():
    for folder in ("sgmn/models", "baselines"):
        assert _offenders(folder, ("sgmn.train", "sgmn.evaluate", "sgmn.cli", "sgmn.bench")) == {}, folder


def test_text_and_data_do_not_import_training():
    for folder in ("sgmn/text", "sgmn/data"):
        assert _offenders(folder, ("sgmn.train", "sgmn.evaluate", "sgmn.cli")) == {}, folder


def test_figures_sit_above_evaluation():
    """figures -> cli: the figures read runs, tables and models, never the CLI or training, and
    nothing below them draws on them."""
    assert _offenders("sgmn/figures", ("sgmn.cli", "sgmn.train")) == {}
    for folder in ("sgmn/data", "sgmn/models", "sgmn/train", "sgmn/evaluate", "sgmn/text", "baselines"):
        assert _offenders(folder, ("sgmn.figures", "sgmn.report")) == {}, folder
