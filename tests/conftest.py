"""Shared fixtures: a tiny synthetic data set in the official format, a tiny trained run.

Nothing here touches the network or the real CIFAR-100.
"""

from __future__ import annotations

import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from vggtool.cli import main
from vggtool.data import write_synthetic

TINY = ["--profile", "quick", "--arch", "vgg11_bn", "--width", "0.125", "--val-size", "100", "--batch-size", "32"]


def one_line_error(result, *fragments):
    """Assert the CLI failed with one `Error: ...` line holding every fragment; return that line."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in result.output
    return lines[0]


def invoke(*args: str, ok: bool = True):
    """Run the CLI; by default insist on success and show the output if it failed."""
    with warnings.catch_warnings():
        result = CliRunner().invoke(main, list(args), catch_exceptions=True, prog_name="vggtool")
    if ok:
        assert result.exit_code == 0, f"{args} -> {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VGGTOOL_HOME", str(tmp_path))
    monkeypatch.delenv("VGGTOOL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    write_synthetic(home / "data", train_per_class=60, test_per_class=10, classes=10, seed=1)
    return home


@contextmanager
def in_home(home: Path):
    """VGGTOOL_HOME set to `home` for a session-scoped fixture, restored afterwards (monkeypatch is per test)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGGTOOL_HOME", str(home))
        mp.delenv("VGGTOOL_DATA", raising=False)
        yield


@pytest.fixture(scope="session")
def trained_run(session_home) -> Path:
    """A tiny model trained for 3 epochs on 10 learnable classes (a few seconds)."""
    with in_home(session_home):
        invoke("train", *TINY, "--epochs", "3", "--lr", "0.05", "--data-dir", str(session_home / "data"),
               "--run-dir", str(session_home / "runs" / "tiny"))
    return session_home / "runs" / "tiny"


@pytest.fixture
def home(session_home, monkeypatch) -> Path:
    """The session workspace with its synthetic data, as the current directory."""
    monkeypatch.setenv("VGGTOOL_HOME", str(session_home))
    monkeypatch.delenv("VGGTOOL_DATA", raising=False)
    monkeypatch.chdir(session_home)
    return session_home


@pytest.fixture
def own_run(trained_run, tmp_path) -> Path:
    """A private copy of the trained run (without variants), for tests that add to it."""
    dest = tmp_path / "run"
    shutil.copytree(trained_run, dest, ignore=shutil.ignore_patterns("variants", "results"))
    return dest
