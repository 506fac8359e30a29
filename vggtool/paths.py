"""Where things live. Every path is a parameter; these are only the defaults.

The workspace root is the current directory, or $VGGTOOL_HOME when set; data
defaults to <root>/data ($VGGTOOL_DATA overrides), runs to <root>/runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from vggtool.errors import VggtoolError

HOME_ENV = "VGGTOOL_HOME"
DATA_ENV = "VGGTOOL_DATA"
LATEST = "LATEST"


def workspace() -> Path:
    return Path(os.environ.get(HOME_ENV) or os.getcwd())


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or workspace() / "data")


def runs_dir() -> Path:
    return workspace() / "runs"


def mark_latest(run_dir: Path) -> None:
    """Remember `run_dir` as the current run, so later phases need no arguments.

    A run inside the workspace is stored relative to it, so the marker still
    holds when the workspace is mounted elsewhere (a container's /workspace).
    """
    from vggtool.files import write_text

    run, root = Path(run_dir).resolve(), workspace().resolve()
    path = run.relative_to(root) if run.is_relative_to(root) else run
    write_text(runs_dir() / LATEST, str(path) + "\n")


def resolve_run_dir(run_dir: Path | None) -> Path:
    """The run to work on: the one given, else the one `vggtool train` last used."""
    if run_dir is None:
        marker = runs_dir() / LATEST
        if not marker.exists():
            raise VggtoolError(
                f"no current run in {runs_dir()}: train one with `vggtool train` or pass --run-dir"
            )
        run_dir = workspace() / marker.read_text().strip()  # an absolute marker stays absolute
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VggtoolError(f"run directory {run_dir} does not exist")
    return run_dir
