"""The container contract, checked without a Docker engine: lint, pins, Make chains, entrypoint."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
REPORT_PINS = {"torch": "2.0.1", "torchvision": "0.15.2", "onnx": "1.14.0", "onnxruntime": "1.15.1"}


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_dockerfile_lints_clean():
    exe = hadolint()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is not installed; requirements/dev.txt provides it")
        pytest.skip("hadolint not installed (make install provides it)")
    result = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # every rule switched off is explained on the line above the pragma
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#") and len(lines[i - 1]) > 20, line


def test_image_ci_and_make_share_the_report_pins():
    report = pins(ROOT / "requirements" / "report.txt")
    assert {k: report[k] for k in REPORT_PINS} == REPORT_PINS
    assert report["numpy"].startswith("1.")
    docker = DOCKERFILE.read_text()
    assert "COPY requirements/report.txt" in docker and "-r /tmp/requirements.txt" in docker
    assert "nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04" in docker and "cu118" in docker
    instructions = "\n".join(line for line in docker.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"(torch|onnx|onnxruntime)==", instructions), "pins belong in requirements/report.txt only"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "for stack in report current" in ci and 'REQUIREMENTS="requirements/$stack.txt"' in ci
    assert "REQUIREMENTS ?= requirements/report.txt" in (ROOT / "Makefile").read_text()
    current = pins(ROOT / "requirements" / "current.txt")
    assert (current["torch"], current["torchvision"]) == ("2.14.1", "0.29.1")


def test_the_report_leg_runs_the_image_versions():
    if os.environ.get("VGGTOOL_STACK") != "report":
        pytest.skip("only on CI's report-stack leg")
    import onnx
    import onnxruntime
    import torch
    import torchvision

    found = {"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
             "onnxruntime": onnxruntime.__version__}
    assert {k: v.split("+")[0] for k, v in found.items()} == REPORT_PINS


def dry_run(target: str, **variables) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    args = ["make", "-n", "--no-print-directory", target] + [f"{k}={v}" for k, v in variables.items()]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if re.search(r"vggtool(:cpu)? \w+", line) and not line.startswith("make")]


PHASES = ["data", "train", "compress", "bench", "report"]


def phase_order(lines: list[str], runner: str) -> list[str]:
    found = []
    for line in lines:
        m = re.search(runner + r"\s+(?:--gpus all\s+|--cpuset-cpus \S+\s+)*(?:\S*vggtool(?::cpu)?)\s+(\w+)", line)
        if m and m.group(1) in PHASES:
            found.append(m.group(1))
    return found


def test_make_all_chains_the_phases_in_order(tmp_path):
    lines = dry_run("all", RUN=str(tmp_path / "run"), CPUS="0-1", THREADS="2")
    assert [re.search(r"vggtool (\w+)", line).group(1) for line in lines] == PHASES
    bench = next(line for line in lines if "vggtool bench" in line)
    assert "--cpus 0-1" in bench and "--threads 2" in bench


def test_docker_all_trains_on_gpu_then_benches_pinned():
    lines = dry_run("docker-all", CPUS="0-1", THREADS="2")
    assert phase_order(lines, r"docker run --rm -v \S+") == PHASES
    train = next(line for line in lines if " train " in line)
    bench = next(line for line in lines if " bench " in line)
    assert "--gpus all" in train
    assert "--cpuset-cpus 0-1" in bench and "--cpus 0-1" in bench and "--threads 2" in bench
    assert "--gpus" not in bench


def test_docker_bench_uses_the_cpu_image_pinned():
    lines = dry_run("docker-bench", CPUS="2-3")
    assert "--cpuset-cpus 2-3" in lines[0] and "vggtool:cpu bench" in lines[0]


def test_entrypoint_contract_console_script_and_module_agree(own_run, home):
    trained_run = own_run
    script = Path(sys.executable).parent / "vggtool"
    assert script.exists(), "the console script is installed beside the interpreter"
    args = ["quantize", "--static", "--fuse", "--run-dir", str(trained_run), "--name", "ep-{}", "--calib-size", "20"]
    a = subprocess.run([str(script), *[x.format("script") for x in args]], capture_output=True, text=True)
    b = subprocess.run([sys.executable, "-m", "vggtool", *[x.format("module") for x in args]], capture_output=True,
                       text=True)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    metas = [(trained_run / "variants" / f"ep-{k}" / "meta.json").read_text() for k in ("script", "module")]
    import json

    ra, rb = (json.loads(m)["recipe"] for m in metas)
    assert ra == rb and ra["params"]["fuse"] is True
    help_a = subprocess.run([str(script), "quantize", "--help"], capture_output=True, text=True).stdout
    help_b = subprocess.run([sys.executable, "-m", "vggtool", "quantize", "--help"], capture_output=True, text=True).stdout
    assert help_a == help_b
