"""Kills, hostile files, fuzzed inputs and full disks: nothing is lost, nothing runs,
every bad input is one line and a non-zero exit. Hypothesis drives the fuzzing,
bounded (see MAX_EXAMPLES) so the suite stays fast; the case counts are printed
with `pytest -s`."""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vggtool import checkpoint
from vggtool import compress as c
from vggtool import data as vdata
from vggtool.cli import main
from vggtool.errors import VggtoolError
from vggtool.report import load_results

from .conftest import TINY, invoke, one_line_error

MAX_EXAMPLES = 40
FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SAFE_WEIGHTS_ONLY = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= checkpoint.SAFE_PTH_TORCH


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(trained_run, session_home, tmp_path_factory):
    """A private run with a float, a quantized, an ONNX and a coded variant."""
    run = tmp_path_factory.mktemp("reliability") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("variants", "results"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGGTOOL_HOME", str(session_home))
        mp.delenv("VGGTOOL_DATA", raising=False)
        invoke("compress", "--run-dir", str(run), "--data-dir", str(session_home / "data"), "--variant", "baseline",
               "--variant", "static-int8-fused", "--variant", "onnx-fp32", "--variant", "cluster-c8l5")
    return run


# ---------------------------------------------------------------- integrity
def test_every_variant_records_its_files_sha256_and_a_changed_file_is_refused(run, home):
    for name in ("baseline", "static-int8-fused", "onnx-fp32", "cluster-c8l5"):
        meta = json.loads((run / "variants" / name / "meta.json").read_text())
        (stored, digest), = meta["sha256"].items()
        assert digest == checkpoint.sha256(run / "variants" / name / stored)
    damaged = run / "variants" / "damaged"
    shutil.copytree(run / "variants" / "baseline", damaged)
    try:
        data_ = bytearray((damaged / "model.safetensors").read_bytes())
        data_[-3] ^= 0x01  # one bit of one weight
        (damaged / "model.safetensors").write_bytes(bytes(data_))
        one_line_error(invoke("evaluate", "--run-dir", str(run), "--variant", "damaged", ok=False),
                       "model.safetensors", "sha256")
    finally:
        shutil.rmtree(damaged)


def test_a_flipped_bit_in_a_checkpoint_is_caught_by_its_own_digest(run, tmp_path):
    data_ = bytearray((run / "best.safetensors").read_bytes())
    data_[-5] ^= 0x04
    (tmp_path / "best.safetensors").write_bytes(bytes(data_))
    with pytest.raises(VggtoolError, match="damaged"):
        checkpoint.load_model(tmp_path / "best.safetensors")


# ---------------------------------------------------------------- full disk
def test_a_full_disk_during_a_variant_write_leaves_the_old_variant_and_says_so(run, home, monkeypatch):
    folder = run / "variants" / "baseline"
    before = digests(folder)

    def full(self, data_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    line = one_line_error(invoke("compress", "--run-dir", str(run), "--variant", "baseline", "--force", ok=False),
                          "disk full")
    monkeypatch.undo()
    assert digests(folder) == before and "intact" in line
    assert not [p for p in (run / "variants").iterdir() if p.name.startswith(".")]  # no litter


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, {"w": torch.ones(3)}, {"kind": "model"})
    before = path.read_bytes()

    def full(self, data_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(VggtoolError, match="disk full"):
        checkpoint.save(path, {"w": torch.zeros(3)}, {"kind": "model"})
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# ---------------------------------------------------------------- hostile pickles
MARKER = "vggtool-pwned"


class Reducer:
    """An object whose unpickling calls `func(*args)`."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):  # pickle wants a callable; unpickling rebuilds the real one
        raise AssertionError("never called in the test process")


def payloads(marker: Path):
    touch = f"open({str(marker)!r}, 'w').close()"
    return st.sampled_from([
        Reducer(os.system, (f"touch {marker}",)),
        Reducer(eval, (touch,)),
        Reducer(builtins.exec, (touch,)),
        Reducer(Reducer(getattr, (Reducer(__import__, ("builtins",)), "exec")), (touch,)),  # nested reducers
        Reducer(subprocess.call, (["touch", str(marker)],)),
        Reducer(Path.touch, (marker,)),
        Reducer(np.array, ([Reducer(os.system, (f"touch {marker}",))], object)),  # an object array
    ])


@FUZZ
@given(data=st.data())
def _hostile_pickles_never_run_as_checkpoints_or_data_files(tmp_path, data):
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    marker = work / MARKER
    payload = data.draw(payloads(marker))
    wrap = data.draw(st.sampled_from(["bare", "state_dict", "cifar"]))
    COUNTS[f"pickle {wrap}"] = COUNTS.get(f"pickle {wrap}", 0) + 1
    obj = {"bare": payload, "state_dict": {"state_dict": {"w": payload}},
           "cifar": {"data": payload, "fine_labels": [0]}}[wrap]
    protocol = data.draw(st.integers(0, pickle.HIGHEST_PROTOCOL))
    raw = pickle.dumps(obj, protocol=protocol)
    for name in ("evil.pth", "train", "test", "meta"):
        (work / name).write_bytes(raw)
    with pytest.raises(VggtoolError):
        checkpoint.read_pth(work / "evil.pth")
    if SAFE_WEIGHTS_ONLY:
        with pytest.raises(VggtoolError):
            checkpoint.read_pth(work / "evil.pth", trust_pickle=True)
    for name in ("train", "test", "meta"):
        with pytest.raises(VggtoolError):
            vdata._read_pickle(work / name)
    assert not marker.exists()


def test_a_hostile_pth_written_by_torch_save_is_refused_in_the_cli(tmp_path, home):
    marker = tmp_path / MARKER
    torch.save({"state_dict": {"w": Reducer(os.system, (f"touch {marker}",))}}, tmp_path / "evil.pth")
    one_line_error(invoke("evaluate", "--checkpoint", str(tmp_path / "evil.pth"), ok=False), "evil.pth")
    if SAFE_WEIGHTS_ONLY:
        one_line_error(invoke("evaluate", "--checkpoint", str(tmp_path / "evil.pth"), "--trust-pickle", ok=False),
                       "evil.pth")
    assert not marker.exists()


# ---------------------------------------------------------------- fuzzed files
def damage(original: bytes, draw) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "random"]))
    if kind == "truncate":
        return original[: draw(st.integers(0, max(len(original) - 1, 0)))]
    if kind == "flip":
        out = bytearray(original)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    return draw(st.binary(min_size=0, max_size=2048))


COUNTS: dict[str, int] = {}


@FUZZ
@given(data=st.data())
def _fuzzed_model_files_are_errors_never_models(run, tmp_path, data):
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    which = data.draw(st.sampled_from(["checkpoint", "safetensors-variant", "vdc", "onnx", "meta"]))
    COUNTS[which] = COUNTS.get(which, 0) + 1
    if which == "checkpoint":
        (work / "m.safetensors").write_bytes(damage((run / "best.safetensors").read_bytes(), data.draw))
        with pytest.raises(VggtoolError):
            checkpoint.load_model(work / "m.safetensors")
        return
    name, stored = {"safetensors-variant": ("static-int8-fused", "model.safetensors"),
                    "vdc": ("cluster-c8l5", "model.vdc"), "onnx": ("onnx-fp32", "model.onnx"),
                    "meta": ("baseline", "meta.json")}[which]
    folder = work / name
    shutil.copytree(run / "variants" / name, folder)
    if which in ("safetensors-variant", "vdc") and data.draw(st.booleans()):
        meta = json.loads((folder / "meta.json").read_text())  # as a folder from before 0.3, without sha256:
        del meta["sha256"]  # the file's own checks must catch the damage
        (folder / "meta.json").write_text(json.dumps(meta))
    original = (folder / stored).read_bytes()
    broken = damage(original, data.draw)
    if broken == original:
        return
    (folder / stored).write_bytes(broken)
    try:
        c.load_variant(folder)
    except VggtoolError:
        return
    # only meta.json may still load: a change to a field that does not touch the model (a date, a figure)
    assert which == "meta", f"damaged {stored} loaded as a model"


@FUZZ
@given(data=st.data())
def _fuzzed_results_config_and_data_files_are_one_line_errors(run, tmp_path, data):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))
    work = tmp_path
    which = data.draw(st.sampled_from(["results", "config", "cifar"]))
    COUNTS[which] = COUNTS.get(which, 0) + 1
    if which == "results":
        good = json.dumps({"rows": [{"variant": "baseline"}], "settings": {}, "environment": {}}).encode()
        damaged = damage(good, data.draw)
        (tmp_path / "results.json").write_bytes(damaged)
        try:
            loaded = load_results(tmp_path)
        except VggtoolError:
            return
        # it loaded: then the bytes were results, and what came back is what they hold
        assert [r.get("variant") for r in loaded["rows"]] == [r.get("variant") for r in json.loads(damaged)["rows"]]
    elif which == "config":
        (tmp_path / "run").mkdir()
        damaged = damage((run / "config.json").read_bytes(), data.draw)
        (tmp_path / "run" / "config.json").write_bytes(damaged)
        from vggtool.config import TrainConfig
        from vggtool.runs import Run

        try:
            cfg = Run(tmp_path / "run").config()
        except VggtoolError:
            return
        saved = json.loads(damaged)["config"]
        if isinstance(saved.get("channels_last"), bool):  # the one upgrade of an older config
            saved["channels_last"] = "on" if saved["channels_last"] else "off"
        assert cfg.to_dict() == {**TrainConfig().to_dict(), **saved}  # what the file says, the rest defaults
    else:
        good = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]}, protocol=2)
        damaged = damage(good, data.draw)
        (tmp_path / "test").write_bytes(damaged)
        try:
            loaded = vdata._read_pickle(work / "test")
        except VggtoolError:
            return
        # the allow-list let it through, so it names only safe types: a plain unpickle must give the same
        plain = pickle.loads(damaged, encoding="latin1")
        assert loaded.keys() == plain.keys()
        for key, value in plain.items():
            assert np.array_equal(loaded[key], value) if isinstance(value, np.ndarray) else loaded[key] == value


# (command, option, bad values, what the error must name: one of these): the error names the option's check,
# so a check removed (the epochs cap, the width bound) fails here instead of some later error passing
BAD_OPTIONS = [
    ("train", "--epochs", st.integers(-10**6, 0), ("epochs must be positive",)),
    ("train", "--batch-size", st.integers(-5, 0), ("batch-size must be positive",)),
    ("train", "--lr", st.sampled_from(["nan", "inf", "-1", "0", "x"]), ("'--lr'", "learning rate must be positive")),
    ("train", "--width", st.floats(4.01, 1e9), ("width must be in",)),
    ("train", "--rotation", st.floats(181, 1e6), ("rotation must be in",)),
    ("train", "--dropout", st.floats(1.0, 100), ("dropout must be in",)),
    ("train", "--label-smoothing", st.floats(1.0, 1e6), ("label-smoothing must be in",)),
    ("train", "--epochs", st.integers(10_001, 10**30), ("epochs must be at most",)),
    ("prune", "--amount", st.floats(1.0, 1e6), ("amount must be in",)),
    ("cluster", "--bits", st.integers(9, 10**6), ("bits must be in",)),
    ("cluster", "--conv-bits", st.integers(-10**6, 0), ("conv bits must be in",)),
    ("bench", "--rounds", st.integers(-100, 0), ("rounds must be positive",)),
    ("bench", "--min-time", st.sampled_from(["-1", "nan", "inf", "-inf"]), ("min time", "'--min-time'")),
    ("evaluate", "--batch-size", st.integers(-9, 0), ("batch-size must be positive",)),
    ("quantize", "--calib-size", st.integers(-10**6, 0), ("calibration size must be positive",)),
    ("export", "--opset", st.integers(22, 10**6), ("opset must be between",)),
]


@FUZZ
@given(data=st.data())
def _fuzzed_command_lines_are_one_line_errors_that_change_nothing(run, home, data):
    command, option, values, named = data.draw(st.sampled_from(BAD_OPTIONS))
    COUNTS["command lines"] = COUNTS.get("command lines", 0) + 1
    value = str(data.draw(values))
    mode = {"prune": ["--global"], "quantize": ["--static"], "export": ["--onnx"]}.get(command, [])
    # a new variant's name where the command builds one: the check must refuse the value, not an existing folder
    options = {o for p in main.commands[command].params for o in getattr(p, "opts", [])}
    name = ["--name", "fuzz"] if "--name" in options else []
    before = digests(run)
    result = invoke(command, *mode, option, value, "--run-dir", str(run), *name, ok=False)
    line = one_line_error(result)
    assert any(fragment in line for fragment in named), (option, value, line)
    assert digests(run) == before


def _cases(fuzz, *fixtures) -> int:
    """Run a hypothesis-driven check and return how many cases it ran (printed with `pytest -s`)."""
    before = dict(COUNTS)
    fuzz(*fixtures)
    ran = {k: v - before.get(k, 0) for k, v in COUNTS.items() if v != before.get(k, 0)}
    print(f"\n{fuzz.__name__[1:]}: {sum(ran.values())} cases {dict(sorted(ran.items()))}")
    return sum(ran.values())


def test_hostile_pickles_never_run_as_checkpoints_or_data_files(tmp_path):
    assert _cases(_hostile_pickles_never_run_as_checkpoints_or_data_files, tmp_path) >= MAX_EXAMPLES


def test_fuzzed_model_files_are_errors_never_models(run, tmp_path):
    assert _cases(_fuzzed_model_files_are_errors_never_models, run, tmp_path) >= MAX_EXAMPLES


def test_fuzzed_results_config_and_data_files_are_one_line_errors(run, tmp_path):
    assert _cases(_fuzzed_results_config_and_data_files_are_one_line_errors, run, tmp_path) >= MAX_EXAMPLES


def test_fuzzed_command_lines_are_one_line_errors_that_change_nothing(run, home):
    assert _cases(_fuzzed_command_lines_are_one_line_errors_that_change_nothing, run, home) >= MAX_EXAMPLES


# ---------------------------------------------------------------- kills
def _vggtool(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "VGGTOOL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("VGGTOOL_DATA", None)
    # SIGINT as a terminal delivers it: a suite started in the background of a non-interactive shell
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt in the child
    return subprocess.Popen([sys.executable, "-m", "vggtool", *args], env=env, cwd=home,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


KILL_IN_WRITE = """
import os, signal, sys
from vggtool import files
real = files.os.replace
def replace(src, dst):
    if os.environ.get("KILL_AT_WRITE") and str(dst).endswith(os.environ["KILL_AT_WRITE"]):
        os.kill(os.getpid(), signal.SIGKILL)  # the new file is complete under its temporary name, not yet renamed
    return real(src, dst)
files.os.replace = replace
from vggtool.cli import main
sys.exit(main(sys.argv[1:], prog_name="vggtool"))
"""


def test_training_killed_anywhere_resumes_to_the_uninterrupted_weights(session_home, tmp_path):
    args = [*TINY, "--epochs", "4", "--data-dir", str(session_home / "data"), "--schedule", "multistep",
            "--lr", "0.02"]
    whole = _vggtool(session_home, "train", *args, "--run-dir", str(tmp_path / "whole"))
    assert whole.wait(timeout=300) == 0, whole.stdout.read()
    run = tmp_path / "killed"
    env = {**os.environ, "VGGTOOL_HOME": str(session_home), "OMP_NUM_THREADS": "1", "KILL_AT_WRITE": "last.safetensors"}
    # a kill inside a checkpoint write: the previous last.safetensors (none yet) stays as it was
    first = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, "train", *args, "--run-dir", str(run)], env=env,
                           cwd=session_home, capture_output=True, text=True, timeout=300)
    assert first.returncode == -signal.SIGKILL and not (run / "last.safetensors").exists()
    kills, rng = 1, np.random.default_rng(0)
    resume: list[str] = []
    for attempt in range(20):  # kills at random times; later ones leave longer, so the run ends
        job = _vggtool(session_home, "train", *(resume or args), "--run-dir", str(run))
        try:
            code = job.wait(timeout=float(rng.uniform(1.0, 4.0)) + attempt)
        except subprocess.TimeoutExpired:
            job.send_signal(signal.SIGKILL)
            job.wait()
            kills += 1
            for f in run.glob("*.safetensors"):  # never an unreadable file on disk
                checkpoint.read(f)
            resume = ["--resume"] if (run / "last.safetensors").exists() else []
            continue
        assert code == 0, job.stdout.read()
        break
    else:
        pytest.fail("training never finished between kills")
    a = checkpoint.read(run / "last.safetensors")[0]
    b = checkpoint.read(tmp_path / "whole" / "last.safetensors")[0]
    weights = [k for k in a if k.startswith("model.")]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights)
    print(f"\ntraining killed {kills} times, resumed to the uninterrupted weights")


def test_compress_killed_rebuilds_only_what_is_missing(trained_run, session_home, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("variants", "results"))
    names = ["baseline", "dynamic-int8", "static-int8-fused", "onnx-fp32"]
    args = ["compress", "--run-dir", str(run), "--data-dir", str(session_home / "data")]
    for name in names:
        args += ["--variant", name]
    job = _vggtool(session_home, *args)
    deadline = time.monotonic() + 120
    while not (run / "variants" / "dynamic-int8" / "meta.json").exists():
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    done = {p.name for p in (run / "variants").iterdir() if (p / "meta.json").exists()}
    for name in done:
        c.load_variant(run / "variants" / name)  # complete and verified
    again = _vggtool(session_home, *args)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    for name in done:
        assert f"kept {name}" in out
    for name in set(names) - done:
        assert f"built {name}" in out
    assert not [p for p in (run / "variants").iterdir() if p.name.startswith(".")]  # litter of the kill removed


def test_bench_killed_inside_its_write_leaves_the_previous_results_whole(run, session_home):
    results = run / "results"
    bench = ["bench", "--run-dir", str(run), "--variant", "baseline", "--quick", "--rounds", "1", "--time-budget", "0",
             "--min-time", "0.05", "--loads", "1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGGTOOL_HOME", str(session_home))
        invoke(*bench)
    before = digests(results)
    env = {**os.environ, "VGGTOOL_HOME": str(session_home), "OMP_NUM_THREADS": "1", "KILL_AT_WRITE": "results.json"}
    killed = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, *bench], env=env, cwd=session_home,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr  # killed with the new file unrenamed
    assert {k: v for k, v in digests(results).items() if not k.startswith(".")} == before
    assert [p for p in results.iterdir() if p.name.startswith(".")]  # the complete new file, under its temporary name
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGGTOOL_HOME", str(session_home))
        invoke("report", "--run-dir", str(run))  # the next writer clears the dead one's litter
    assert not [p for p in results.iterdir() if p.name.startswith(".")]
    assert digests(results)["results.json"] == before["results.json"]


def test_ctrl_c_ends_training_with_one_line_and_exit_130(session_home, tmp_path):
    run = tmp_path / "interrupted"
    job = _vggtool(session_home, "train", *TINY, "--epochs", "50", "--data-dir", str(session_home / "data"),
                   "--run-dir", str(run))
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists():  # in the training loop
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    job.send_signal(signal.SIGINT)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 130, out
    assert "Traceback" not in out and out.strip().splitlines()[-1].startswith("interrupted:")
    checkpoint.read(run / "last.safetensors")  # what was written is complete
