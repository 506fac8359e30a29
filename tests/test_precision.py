"""Training precision on the CPU: bf16 autocast where the CPU has native bf16, float32 elsewhere,
refusals in one line, and what each run records."""

import json

import pytest
import torch
from safetensors.torch import save_file

from vggtool import cpu
from vggtool.config import resolve
from vggtool.data import load_splits
from vggtool.models import ArchSpec, build_model
from vggtool.precision import amp_dtype
from vggtool.runs import CONFIG, METRICS
from vggtool.train import _optimizer, distillation, train, train_one_epoch

from .conftest import TINY, invoke, one_line_error

NATIVE = cpu.has_native_bf16()
NEEDS_BF16 = pytest.mark.skipif(not NATIVE, reason=f"this CPU has no native bf16 ({' or '.join(cpu.BF16_FLAGS)}): "
                                                    "bf16 autocast is not used on it")
SMALL = dict(arch="vgg11_bn", width=0.125, batch_size=32, val_size=100, lr=0.05, schedule="onecycle", warmup_epochs=0)


@pytest.fixture(scope="module")
def splits(session_home):
    return load_splits(session_home / "data", val_size=100, seed=0)


def conv_output_dtypes(model) -> list:
    seen = []
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    return seen


@NEEDS_BF16
def test_bf16_autocast_runs_the_training_steps_where_the_cpu_has_it(splits):
    cfg = resolve("quick", **SMALL, epochs=1, amp="bf16", device="cpu")
    model = build_model(ArchSpec("vgg11_bn", 10, 0.125, 0.0))
    seen = conv_output_dtypes(model)
    stats = train_one_epoch(model, _optimizer(model, cfg), splits.train, cfg, 0)
    assert seen and set(seen) == {torch.bfloat16}
    assert stats["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32


def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16(monkeypatch):
    cfg, device = resolve("quick", amp="auto"), torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(cpu, "has_native_bf16", lambda native=native: native)
        assert amp_dtype(cfg, device) is expected
    assert amp_dtype(resolve("quick", amp="off"), device) is None


@NEEDS_BF16
def test_the_distillation_teacher_runs_in_bf16_inside_the_training_step(splits):
    """The KD term is computed inside the training step's autocast, so the teacher runs in bf16 too."""
    cfg = resolve("quick", **SMALL, epochs=1, amp="bf16", device="cpu")
    student, teacher = (build_model(ArchSpec("vgg11_bn", 10, 0.125, 0.0)) for _ in range(2))
    seen = conv_output_dtypes(teacher)
    losses = []
    kd = distillation(teacher, 4.0, 1.0)

    def extra(x, logits):
        losses.append(kd(x, logits))
        return losses[-1]

    train_one_epoch(student, _optimizer(student, cfg), splits.train, cfg, 0, extra_loss=extra)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses)  # the term itself in float32


@pytest.mark.parametrize("native, args, fragments", [
    (False, ("--amp", "bf16"), ("--amp bf16 needs a CPU with native bf16", "avx512_bf16 or amx_bf16")),
    (True, ("--amp", "fp16"), ("--amp fp16 needs a CUDA device",)),
    (False, ("--amp", "fp16"), ("--amp fp16 needs a CUDA device",)),
])
def test_a_precision_the_cpu_cannot_run_is_a_one_line_error(home, monkeypatch, native, args, fragments):
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: native)
    result = invoke("train", *TINY, "--epochs", "1", "--device", "cpu", "--run-dir", "runs/noamp", *args, ok=False)
    one_line_error(result, *fragments)
    assert not (home / "runs" / "noamp").exists()


def test_config_and_metrics_record_the_precision(splits, tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)
    train(resolve("quick", **SMALL, epochs=1, device="cpu"), splits, tmp_path)
    saved = json.loads((tmp_path / CONFIG).read_text())
    assert saved["precision"] == "fp32" and saved["channels_last"] is False and saved["config"]["amp"] == "auto"
    assert [json.loads(line)["precision"] for line in (tmp_path / METRICS).read_text().splitlines()] == ["fp32"]


@NEEDS_BF16
def test_bf16_training_ends_within_tolerance_of_float32(splits, tmp_path):
    """Same seed, same data, same schedule: bf16 autocast must not cost accuracy. On these 100 validation
    images of 10 learnable classes, the two may differ by at most 0.08 top-1 error (8 images)."""
    errors = {}
    for amp in ("off", "bf16"):
        result = train(resolve("quick", **SMALL, epochs=4, amp=amp, device="cpu"), splits, tmp_path / amp)
        records = [json.loads(line) for line in (tmp_path / amp / METRICS).read_text().splitlines()]
        assert {r["precision"] for r in records} == {"fp32" if amp == "off" else "bf16"}
        errors[amp] = result.best_val.top1_err
    assert errors["off"] < 0.6 and errors["bf16"] < 0.6  # both learnt (chance is 0.9)
    assert abs(errors["bf16"] - errors["off"]) <= 0.08, errors


def test_importing_a_float16_file_that_is_no_vgg_is_a_one_line_error(home, tmp_path):
    bad = tmp_path / "not-vgg.fp16.safetensors"
    save_file({"features.0.weight": torch.zeros(8, 3, 3, 3, dtype=torch.float16),
               "classifier.0.weight": torch.zeros(5, 7, dtype=torch.float16)}, str(bad))
    one_line_error(invoke("import", str(bad), "--run-dir", str(tmp_path / "imported"), ok=False),
                   "not a VGG-BN state_dict")
    assert not (tmp_path / "imported").exists()


def test_a_float16_vgg_imports_into_float32(home, tmp_path, trained_run):
    from vggtool import checkpoint

    state, _ = checkpoint.read(trained_run / "best.safetensors")
    half = {k: v.half() if v.is_floating_point() and v.dim() > 1 else v for k, v in state.items()}
    save_file(half, str(tmp_path / "tiny.fp16.safetensors"))
    invoke("import", str(tmp_path / "tiny.fp16.safetensors"), "--run-dir", str(tmp_path / "imported"))
    model, _, _ = checkpoint.load_model(tmp_path / "imported" / "best.safetensors", None)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ref = state["features.0.weight"]
    assert torch.allclose(model.state_dict()["features.0.weight"], ref, atol=1e-3 * ref.abs().max().item())
    # a bench of the imported run describes its baseline by the file it came from, not by default settings
    from vggtool.bench.run import describe
    from vggtool.runs import Run

    assert describe(Run(tmp_path / "imported")) == {"run": "imported", "arch": "vgg11_bn", "width": 0.125,
                                                     "imported_from": "tiny.fp16.safetensors", "epochs": None}
    assert describe(Run(trained_run))["epochs"] == 3 and "imported_from" not in describe(Run(trained_run))


def test_a_run_resumes_only_in_the_precision_it_began_in(splits, tmp_path, monkeypatch):
    from vggtool.errors import VggtoolError

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)
    cfg = resolve("quick", **SMALL, epochs=2, device="cpu")
    train(resolve("quick", **SMALL, epochs=1, device="cpu"), splits, tmp_path)
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)  # the same run, resumed where auto now means bf16
    before = (tmp_path / METRICS).read_text()
    with pytest.raises(VggtoolError, match="trained in fp32 so far and would go on in bf16 here: resume with --amp off"):
        train(cfg, splits, tmp_path, resume=True)
    assert (tmp_path / METRICS).read_text() == before
    train(resolve("quick", **SMALL, epochs=2, device="cpu", amp="off"), splits, tmp_path, resume=True)
    assert [json.loads(line)["precision"] for line in (tmp_path / METRICS).read_text().splitlines()] == ["fp32"] * 2


def test_configs_saved_before_the_auto_memory_format_still_load():
    from vggtool.config import TrainConfig

    assert TrainConfig.from_dict({"channels_last": True}).channels_last == "on"
    assert TrainConfig.from_dict({"channels_last": False}).channels_last == "off"
