"""Training in two processes with torchrun and gloo on a tiny model: it follows the
one-process run with the same global batch, only the first process writes, it
resumes (with the same or another number of processes), a killed process ends
the job, and bad launches are one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vggtool import checkpoint

from .conftest import invoke, one_line_error

# A constant, small learning rate and float32: the comparison measures the data split over processes,
# not how a chaotic schedule amplifies BatchNorm's per-process statistics or bf16's rounding.
TINY = ["--profile", "quick", "--arch", "vgg11_bn", "--width", "0.125", "--val-size", "100", "--batch-size", "32",
        "--schedule", "multistep", "--lr", "0.02", "--no-augment", "--amp", "off"]
LOSS_TOLERANCE = 0.10  # relative, per epoch: each process normalises BatchNorm over its 16 images, not 32


def torchrun(home: Path, *args: str, nproc: int = 2, timeout: float = 240, launcher: tuple = (), **popen):
    env = {**os.environ, "VGGTOOL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("VGGTOOL_DATA", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *launcher,
           "-m", "vggtool", "train", *args]
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, cwd=home, capture_output=True, text=True, timeout=timeout)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict:
    state, _ = checkpoint.read(path)
    return {k: v for k, v in state.items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def two(session_home):
    """One run in one process, the same in two processes (2 epochs each)."""
    data = str(session_home / "data")
    runs = session_home / "ddp"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGGTOOL_HOME", str(session_home))
        mp.setenv("OMP_NUM_THREADS", "1")
        invoke("train", *TINY, "--epochs", "2", "--data-dir", data, "--run-dir", str(runs / "one"))
    out = torchrun(session_home, *TINY, "--epochs", "2", "--data-dir", data, "--run-dir", str(runs / "two"))
    assert out.returncode == 0, out.stdout + out.stderr
    return runs, out.stdout + out.stderr, data


def test_two_processes_follow_one_process_with_the_same_global_batch(two):
    runs, _, _ = two
    one, both = losses(runs / "one"), losses(runs / "two")
    assert len(one) == len(both) == 2
    for a, b in zip(one, both):
        assert abs(a - b) <= LOSS_TOLERANCE * a, (one, both)
    assert json.loads((runs / "two" / "config.json").read_text())["world_size"] == 2
    lines = [json.loads(line) for line in (runs / "two" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["world_size"] == 2 and r["images_per_s"] > 0 and r["step_ms"] > 0 for r in lines)


def test_only_the_first_process_writes_and_talks(two):
    runs, output, _ = two
    assert len(losses(runs / "two")) == 2  # one line per epoch, not one per process
    assert sorted(p.name for p in (runs / "two").iterdir()) == [
        "best.safetensors", "config.json", "last.safetensors", "metrics.jsonl"]
    assert output.count("training vgg11_bn") == 1 and "in 2 processes" in output
    assert output.count("epoch 2/2:") == 1


def test_resume_in_two_processes_ends_where_an_uninterrupted_run_ends(two, session_home):
    runs, _, data = two
    part = runs / "part"
    first = torchrun(session_home, *TINY, "--epochs", "1", "--data-dir", data, "--run-dir", str(part))
    assert first.returncode == 0, first.stdout + first.stderr
    rest = torchrun(session_home, "--resume", "--epochs", "2", "--run-dir", str(part))
    assert rest.returncode == 0, rest.stdout + rest.stderr
    a, b = weights(part / "last.safetensors"), weights(runs / "two" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_a_two_process_checkpoint_resumes_in_one_process(two, session_home, monkeypatch):
    """Another number of processes is handled, not refused: the global batch, order and
    augmentation do not depend on it; the metrics say which epochs ran how."""
    runs, _, _ = two
    import shutil

    moved = runs / "moved"
    shutil.copytree(runs / "two", moved)
    monkeypatch.setenv("VGGTOOL_HOME", str(session_home))
    invoke("train", "--resume", "--epochs", "3", "--run-dir", str(moved))
    lines = [json.loads(line) for line in (moved / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in lines] == [2, 2, 1]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _rank_pid(parent: int, rank: int) -> int | None:
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            stat = (child / "stat").read_text()
            env = (child / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(child.name)
    return None


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_killed_or_stalled_process_ends_the_whole_job_without_a_hang(session_home, how):
    """A dead peer breaks the survivor's collective at once; a stalled one (SIGSTOP: its sockets stay open)
    only through the collective timeout, --dist-timeout 10 here."""
    run = session_home / "ddp" / f"lost-{how.name}"
    # torchrun looks at its workers every --monitor-interval seconds and then ends the rest: 0.1 s on current
    # torch, which can end the survivor before it has noticed the dead peer and said so; 5 s (2.0.1's default)
    # leaves it time to say it, and the whole job still ends long before the 60 s asserted below
    job = torchrun(session_home, *TINY, "--epochs", "200", "--data-dir", str(session_home / "data"),
                   "--run-dir", str(run), "--dist-timeout", "10", launcher=("--monitor-interval", "5"), popen=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists():  # both processes are in the training loop
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read() if job.stdout else ""
            time.sleep(0.5)
        pid, survivor = _rank_pid(job.pid, 1), _rank_pid(job.pid, 0)
        assert pid is not None and survivor is not None
        os.kill(pid, how)
        killed = time.monotonic()
        if how == signal.SIGSTOP:  # once the survivor gave up, end the stalled one (torchrun would wait 30 s more)
            while _alive(survivor) and time.monotonic() - killed < 60:
                time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
        out, _ = job.communicate(timeout=60)
        assert job.returncode != 0 and time.monotonic() - killed < 60
        # vggtool's own line from the survivor, not only torchrun's report of the killed one
        assert "Error: rank 0: lost the other training processes" in out, out[-2000:]
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    # what was written is complete: the last checkpoint reads back
    checkpoint.read(run / "last.safetensors")


# ---------------------------------------------------------------- bad launches
def test_a_launch_missing_torchruns_environment_is_a_one_line_error(home, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    result = invoke("train", *TINY, "--epochs", "1", "--run-dir", "runs/env", ok=False)
    one_line_error(result, "torchrun's environment", "RANK")
    assert not (home / "runs" / "env").exists()


def test_more_processes_than_cores_is_a_one_line_error(home, monkeypatch):
    many = str((os.cpu_count() or 1) + 1)
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": many, "LOCAL_WORLD_SIZE": many,
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(key, value)
    one_line_error(invoke("train", *TINY, "--epochs", "1", "--run-dir", "runs/many", ok=False),
                   f"--nproc_per_node {many} exceeds")


@pytest.mark.parametrize("args, fragment", [
    (("--amp", "fp16", "--device", "cpu"), "needs a CUDA device"),
    (("--sync-bn", "--device", "cpu"), "needs CUDA"),
    (("--dist-timeout", "0"), "dist-timeout must be positive"),
])
def test_gpu_only_options_on_cpu_are_one_line_errors(home, args, fragment):
    one_line_error(invoke("train", *TINY, "--epochs", "1", "--run-dir", "runs/bad", *args, ok=False), fragment)
    assert not (home / "runs" / "bad").exists()


def test_compile_trains_where_the_stack_has_it_and_is_one_line_elsewhere(home):
    from vggtool.errors import VggtoolError
    from vggtool.train import compile_unavailable

    try:
        compile_unavailable()
    except VggtoolError:
        one_line_error(invoke("train", *TINY, "--epochs", "1", "--compile", "--run-dir", "runs/compiled", ok=False),
                       "--compile is unavailable")
        assert not (home / "runs" / "compiled").exists()
        return
    invoke("train", *TINY, "--epochs", "1", "--compile", "--run-dir", "runs/compiled")
    assert json.loads((home / "runs" / "compiled" / "config.json").read_text())["config"]["compile"] is True
