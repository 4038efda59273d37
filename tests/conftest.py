"""Shared fixtures: small generated datasets, made once per test session, a writable
copy of the handwritten real-format fixture, and img2dataset in a virtual environment of its own."""
import os
import shlex
import shutil
import signal
import subprocess
import sys
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


@pytest.fixture(scope="session")
def smoke_dag(tmp_path_factory):
    """The whole smoke DAG (workflow/config/smoke.yaml) run once per session in a temporary working
    directory, for tests that read its outputs (tests/test_report.py); its path. Skips when the
    sgmn console script, which the rules call, is not on PATH."""
    if shutil.which("sgmn") is None:
        pytest.skip("the sgmn console script is not on PATH (pip install -e . in the active env)")
    repo = Path(__file__).resolve().parents[1]
    workdir = tmp_path_factory.mktemp("smoke_dag")
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
                          "--configfile", str(repo / "workflow/config/smoke.yaml"), "--cores", "2"],
                         check=False, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir


REAL_FIXTURE = Path(__file__).parent / "fixtures" / "lpr4m_real_small"


@pytest.fixture
def data(tmp_path):
    """A writable copy of the handwritten LPR4M fixture, for tests that break it."""
    dst = tmp_path / "lpr4m"
    shutil.copytree(REAL_FIXTURE, dst)
    return dst


# img2dataset (tests/test_download.py) pins pandas<3 and the suite uses pandas 3: it gets a virtual
# environment of its own, cached under ~/.cache/sgmn-tests and reused while it holds the pinned
# version. Building it takes ~1-1.5 min on 2 cores, so it starts in the background as soon as the
# session knows a selected test needs it, and overlaps the tests before that one.
# SGMN_IMG2DATASET names an existing img2dataset executable instead.
_IMG2DATASET_BUILD: dict = {}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny model tests (`pytestmark =
    pytest.mark.usefixtures("one_thread")`): on a shared 2-core machine torch's thread pool makes
    these small ops ~40x slower under contention. Restored afterwards."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _img2dataset_venv() -> Path:
    from sgmn.data.download import IMG2DATASET_VERSION
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sgmn-tests"
    return cache / f"img2dataset-{IMG2DATASET_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"


def _img2dataset_ready(venv: Path) -> bool:
    from sgmn.data.download import IMG2DATASET_VERSION
    check = f"import importlib.metadata as m; assert m.version('img2dataset') == {IMG2DATASET_VERSION!r}"
    return (venv / ".sgmn-installed").exists() and subprocess.run(
        [venv / "bin" / "python", "-c", check], capture_output=True).returncode == 0


def _start_img2dataset_build(venv: Path) -> subprocess.Popen:
    from sgmn.data.download import IMG2DATASET_VERSION
    shutil.rmtree(venv, ignore_errors=True)              # a half-built one from an interrupted run
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"{venv.name}.log"
    py = shlex.quote(str(venv / "bin" / "python"))
    script = (f"{shlex.quote(sys.executable)} -m venv {shlex.quote(str(venv))} && {py} -m pip install -q "
              f"--disable-pip-version-check --no-compile img2dataset=={IMG2DATASET_VERSION}")
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", script], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _IMG2DATASET_BUILD.update(proc=proc, log=log)
    return proc


def pytest_collection_finish(session):
    if os.environ.get("SGMN_IMG2DATASET") or not any(
            "img2dataset_exe" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    venv = _img2dataset_venv()
    if not _img2dataset_ready(venv):
        _start_img2dataset_build(venv)


def pytest_sessionfinish(session):
    proc = _IMG2DATASET_BUILD.get("proc")
    if proc is not None and proc.poll() is None:         # not needed after all: stop it and pip (no marker)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def img2dataset_exe() -> str:
    """The img2dataset executable of sgmn.data.download.IMG2DATASET_VERSION."""
    if os.environ.get("SGMN_IMG2DATASET"):
        return os.environ["SGMN_IMG2DATASET"]
    from sgmn.data.download import IMG2DATASET_VERSION
    venv = _img2dataset_venv()
    if not _img2dataset_ready(venv):
        proc = _IMG2DATASET_BUILD.get("proc") or _start_img2dataset_build(venv)
        rc = proc.wait(timeout=900)
        log = _IMG2DATASET_BUILD["log"].read_text()
        assert rc == 0, f"installing img2dataset=={IMG2DATASET_VERSION} into {venv} failed:\n{log[-3000:]}"
        (venv / ".sgmn-installed").write_text(IMG2DATASET_VERSION + "\n")
    return str(venv / "bin" / "img2dataset")
