"""The installed package, as the Docker image installs it (`pip install --no-deps /src`): a wheel built
from the checkout, installed into a fresh environment, run from outside the checkout."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_wheel_holds_every_module_and_runs_from_outside_the_checkout(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", ROOT)
    wheel = next((tmp_path / "dist").glob("vggtool-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ROOT.joinpath("vggtool").rglob("*.py"):
        assert module.relative_to(ROOT).as_posix() in names, f"{module.relative_to(ROOT)} is not in the wheel"
    env = tmp_path / "env"
    run(sys.executable, "-m", "venv", "--without-pip", env)
    # the new environment sees this one's dependencies (torch and the rest) but not the checkout
    site = next(env.glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "install", "--no-deps", "--target", site, wheel)
    out = run(env / "bin" / "python", "-c", "import vggtool, sys; print(vggtool.__file__)", cwd=tmp_path)
    assert str(site) in out
    listed = run(env / "bin" / "python", "-m", "vggtool", "compress", "--list", cwd=tmp_path)
    assert "static-int8-fused" in listed and "structured-0.5-kd" in listed
