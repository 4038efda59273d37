"""Atomic writes and run provenance (config, seed, git commit, library versions)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from sgmn.paths import REPO_ROOT


class OutputError(OSError):
    """An output path that cannot be written; the message names the path and why, in one line."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_path(path: str | Path) -> Path:
    """`path` can be written as a file: not a directory, its directory creatable and writable."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output {path} is a directory (give a file path)")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"output {path}: cannot create its directory {parent} ({err.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output {path}: its directory {parent} is not writable")
    return path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    The file gets the mode a plain open() would (0666 less the umask), not mkstemp's 0600, so
    other users of a shared filesystem can read results and checkpoints.
    """
    path = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_save(obj, path: str | Path) -> None:
    import torch  # lazily: the light rules (tables env) have no torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_table(df, path: str | Path) -> None:
    """Write a DataFrame as Parquet or CSV, chosen by the suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)


CODE_PATHS = ("sgmn", "baselines", "workflow", "Snakefile", "pyproject.toml", "environment.yml")


def git_commit() -> dict:
    """The commit of the suite's checkout, and whether its code had uncommitted changes."""
    root = REPO_ROOT
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        # only the code counts: results/ and figures/ change with every run
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
                                    cwd=root, capture_output=True, text=True).stdout.strip())
        return {"commit": sha, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def library_versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("torch", "torchvision", "open_clip_torch", "transformers", "numpy", "pandas",
                "snakemake", "decord", "sgmn-suite"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    torch = sys.modules.get("torch")  # only a process that uses torch reports CUDA
    out["cuda"] = torch.version.cuda if torch is not None and torch.cuda.is_available() else None
    return out


def provenance(config: dict | None = None, seed: int | None = None) -> dict:
    """What made a result: config, seed, git commit and library versions."""
    return {"config": config, "seed": seed, "git": git_commit(), "versions": library_versions()}
