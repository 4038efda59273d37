"""Shared fixtures: small generated datasets, made once per test session, and a writable
copy of the handwritten real-format fixture."""
import shutil
from pathlib import Path

import pytest

from sgmn.cli import main


def _synth(tmp_path_factory, fmt: str):
    out = tmp_path_factory.mktemp(f"synth_{fmt}") / "data"
    assert main(["synth", "--preset", "smoke", "--seed", "0", "--format", fmt, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """LPR-Synth smoke preset in LPR4M's layout."""
    return _synth(tmp_path_factory, "lpr4m")


@pytest.fixture(scope="session")
def mf_data(tmp_path_factory):
    """MF-Synth smoke preset in MovingFashion's layout."""
    return _synth(tmp_path_factory, "movingfashion")


REAL_FIXTURE = Path(__file__).parent / "fixtures" / "lpr4m_real_small"


@pytest.fixture
def data(tmp_path):
    """A writable copy of the handwritten LPR4M fixture, for tests that break it."""
    dst = tmp_path / "lpr4m"
    shutil.copytree(REAL_FIXTURE, dst)
    return dst
