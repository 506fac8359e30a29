"""Every command through Click's CliRunner, and each bad input as a one-line error."""

import json
import subprocess
import sys

import pytest
import torch

from vggtool import checkpoint
from vggtool.models import ArchSpec, build_model

from .conftest import TINY, invoke, one_line_error


def test_train_then_evaluate_end_to_end(trained_run, home):
    result = invoke("evaluate", "--run-dir", str(trained_run), "--json")
    row = json.loads(result.output)
    assert row["images"] == 100 and row["split"] == "test"
    assert row["top1_err"] < 0.5  # 10 classes: chance is 0.9
    table = invoke("evaluate", "--run-dir", str(trained_run), "--split", "val").output
    assert "top-1 err" in table and "baseline" in table
    config = json.loads((trained_run / "config.json").read_text())
    assert config["config"]["arch"] == "vgg11_bn" and config["synthetic_data"] is True


def test_last_checkpoint_evaluates_as_its_model_weights(trained_run, home, tmp_path):
    """`evaluate --checkpoint last.safetensors` measures the model inside the training state:
    the same figures as those weights saved alone, and as best.safetensors when both hold one epoch."""
    from safetensors.torch import save_file

    def err(path):
        return json.loads(invoke("evaluate", "--checkpoint", str(path), "--run-dir", str(trained_run), "--split", "val",
                                 "--json").output)

    state, meta = checkpoint.read(trained_run / "last.safetensors")
    weights = tmp_path / "weights.safetensors"
    save_file({k.removeprefix("model."): v.contiguous() for k, v in state.items() if k.startswith("model.")}, str(weights))
    last, alone = err(trained_run / "last.safetensors"), err(weights)
    assert last["images"] == 100 and (last["top1_err"], last["top5_err"]) == (alone["top1_err"], alone["top5_err"])
    assert last["top1_err"] < 0.5  # trained weights, not a fresh initialisation (chance is 0.9)
    best = err(trained_run / "best.safetensors")
    if meta["best"]["epoch"] == meta["epoch"]:
        assert (last["top1_err"], last["top5_err"]) == (best["top1_err"], best["top5_err"])
    else:
        assert best["top1_err"] <= last["top1_err"]  # best is chosen on this very split


def test_current_run_survives_a_moved_workspace(workspace, monkeypatch, tmp_path_factory):
    import shutil

    from vggtool.paths import mark_latest, resolve_run_dir

    (workspace / "runs" / "quick").mkdir(parents=True)
    mark_latest(workspace / "runs" / "quick")
    assert (workspace / "runs" / "LATEST").read_text().strip() == "runs/quick"
    moved = tmp_path_factory.mktemp("mounted") / "workspace"  # as in `docker run -v "$PWD":/workspace`
    shutil.copytree(workspace, moved)
    monkeypatch.setenv("VGGTOOL_HOME", str(moved))
    assert resolve_run_dir(None) == moved / "runs" / "quick"


def test_resume_needs_a_run(workspace):
    one_line_error(invoke("train", "--resume", "--run-dir", str(workspace / "nope"), ok=False), "nothing to resume")


def test_train_without_data_is_one_line_error(workspace):
    one_line_error(invoke("train", *TINY, ok=False), "vggtool data --synthetic", "--data-dir")


def test_evaluate_missing_run_dir(workspace):
    one_line_error(invoke("evaluate", "--run-dir", str(workspace / "nope"), ok=False), "does not exist")
    one_line_error(invoke("evaluate", ok=False), "no current run")


@pytest.mark.parametrize("args,fragment", [
    (["--epochs", "0"], "epochs must be positive"),
    (["--epochs", "-2"], "epochs must be positive"),
    (["--batch-size", "0"], "batch-size must be positive"),
    (["--lr", "0"], "learning rate must be positive"),
    (["--lr", "-1"], "learning rate must be positive"),
    (["--arch", "vgg20_bn"], "unknown architecture"),
    (["--profile", "huge"], "unknown profile"),
])
def test_train_bad_options(home, args, fragment):
    one_line_error(invoke("train", *TINY, *args, "--run-dir", str(home / "runs" / "bad"), ok=False), fragment)
    assert not (home / "runs" / "bad").exists()


def test_truncated_checkpoint(trained_run, home, tmp_path):
    data = (trained_run / "best.safetensors").read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    one_line_error(invoke("evaluate", "--checkpoint", str(bad), "--run-dir", str(trained_run), ok=False),
                   "not a readable safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    one_line_error(invoke("evaluate", "--checkpoint", str(garbage), ok=False), "not a readable")


def test_checkpoint_of_another_architecture(trained_run, home, tmp_path):
    other = build_model(ArchSpec("vgg11_bn", 10, 0.25))
    path = tmp_path / "other.safetensors"
    checkpoint.save(path, other.state_dict(), {"spec": ArchSpec("vgg11_bn", 10, 0.125).to_dict()})
    line = one_line_error(invoke("evaluate", "--checkpoint", str(path), "--run-dir", str(trained_run), ok=False),
                          "does not fit")
    assert "features.0.weight (16, 3, 3, 3) vs (8, 3, 3, 3)" in line


def test_raw_state_dict_of_the_report_layout_loads(trained_run, home, tmp_path):
    state, _ = checkpoint.read(trained_run / "best.safetensors")
    raw = tmp_path / "raw.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(raw))
    a = json.loads(invoke("evaluate", "--checkpoint", str(raw), "--run-dir", str(trained_run), "--json").output)
    b = json.loads(invoke("evaluate", "--run-dir", str(trained_run), "--json").output)
    assert a["top1_err"] == b["top1_err"]


def test_foreign_pth_needs_opt_in_and_never_runs_code(trained_run, home, tmp_path):
    state, _ = checkpoint.read(trained_run / "best.safetensors")
    pth = tmp_path / "report.pth"
    torch.save(state, pth)
    old_torch = checkpoint._torch_version() < checkpoint.SAFE_PTH_TORCH
    if old_torch:
        one_line_error(invoke("import", str(pth), "--run-dir", str(tmp_path / "imp"), ok=False), "--trust-pickle")
    invoke("import", str(pth), "--run-dir", str(tmp_path / "imp"), "--trust-pickle")
    assert (tmp_path / "imp" / "best.safetensors").exists()

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('ran')",))

    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": Evil()}, evil)
    one_line_error(invoke("evaluate", "--checkpoint", str(evil), "--trust-pickle", ok=False), "not a readable")
    assert not (tmp_path / "pwned").exists()


def test_python_m_and_console_script_agree(trained_run, home):
    args = ["quantize", "--static", "--dynamic"]
    a = subprocess.run([sys.executable, "-m", "vggtool", *args], capture_output=True, text=True)
    b = invoke(*args, ok=False)
    assert a.returncode == b.exit_code == 1
    assert a.stderr.strip() == b.output.strip()
