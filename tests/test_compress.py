"""Each recipe on a tiny model: close to fp32, really quantized/pruned, reloads identically."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from vggtool import compress as c
from vggtool import prune, quant_ao
from vggtool.data import load_splits
from vggtool.evaluate import torch_predict
from vggtool.models import ArchSpec, build_model

from .conftest import invoke
from .test_cli import one_line_error


@pytest.fixture(scope="module")
def built(trained_run, session_home):
    """All eight variants, built once through `vggtool compress`."""
    import os

    os.environ["VGGTOOL_HOME"] = str(session_home)
    try:
        invoke("compress", "--run-dir", str(trained_run), "--data-dir", str(session_home / "data"))
    finally:
        del os.environ["VGGTOOL_HOME"]
    return trained_run / "variants"


@pytest.fixture(scope="module")
def test_batch(session_home):
    from vggtool.data import batches

    return next(batches(load_splits(session_home / "data", val_size=100).test, 64))[0]


def fp32_logits(run, x):
    from vggtool import checkpoint

    model, _, _ = checkpoint.load_model(run / "best.safetensors")
    return torch_predict(model)(x)


def test_all_eight_variants_with_meta(built):
    assert sorted(p.name for p in built.iterdir()) == sorted(c.REGISTRY)
    for name in c.REGISTRY:
        meta = json.loads((built / name / "meta.json").read_text())
        assert meta["recipe"] == c.REGISTRY[name].to_dict()
        assert len(meta["chain"][0]["sha256"]) == 64
        assert {"torch", "onnx", "onnxruntime"} <= set(meta["versions"])
        assert meta["figures"]["size_mb"] > 0 and meta["figures"]["compressed_bytes"] > 0


@pytest.mark.parametrize("name,tolerance", [
    ("baseline", 0.0), ("dynamic-fp16", 0.05), ("dynamic-int8", 0.3), ("static-int8", 1.0),
    ("static-int8-fused", 1.0), ("onnx-fp32", 1e-4),
])
def test_outputs_close_to_fp32(built, trained_run, test_batch, name, tolerance):
    ref = fp32_logits(trained_run, test_batch)
    out = torch.as_tensor(c.load_variant(built / name).predict(test_batch))
    scale = ref.abs().max()
    assert (out - ref).abs().max() <= tolerance * scale + 1e-6
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= (0.9 if tolerance >= 0.3 else 0.99)


@pytest.mark.parametrize("name,expected", [
    ("dynamic-int8", {"classifier.0", "classifier.3", "classifier.6"}),
    ("dynamic-fp16", {"classifier.0", "classifier.3", "classifier.6"}),
])
def test_dynamic_quantizes_only_linear(built, name, expected):
    model = c.load_variant(built / name).model
    assert set(quant_ao.quantized_modules(model)) == expected
    assert not any(isinstance(m, nn.Linear) and type(m) is nn.Linear for m in model.modules())


@pytest.mark.parametrize("name", ["static-int8", "static-int8-fused"])
def test_static_quantizes_every_conv_and_linear(built, name):
    model = c.load_variant(built / name).model
    weights = [m.weight() for m in model.modules() if hasattr(m, "weight") and callable(m.weight)]
    assert len(weights) == 8 + 3 and all(w.dtype == torch.qint8 for w in weights)
    assert all(w.qscheme() == torch.per_channel_affine for w in weights)
    has_bn = any("BatchNorm" in type(m).__name__ for m in model.modules())
    assert has_bn == (name == "static-int8")


def test_static_calibrates_on_validation_not_test(built):
    meta = json.loads((built / "static-int8" / "meta.json").read_text())
    assert meta["figures"]["calibration_split"] == "val"
    assert meta["figures"]["calibration_images"] == 100


@pytest.mark.parametrize("name", ["prune-global-0.6", "prune-local-0.6"])
def test_pruned_weights_are_zero_at_the_stated_sparsity(built, name):
    model = c.load_variant(built / name).model
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in convs)
    total = sum(w.numel() for w in convs)
    assert zeros / total == pytest.approx(0.6, abs=1e-3)
    if name.startswith("prune-local"):
        assert all((w == 0).float().mean() == pytest.approx(0.6, abs=0.01) for w in convs)
    meta = json.loads((built / name / "meta.json").read_text())["figures"]
    assert meta["sparsity_conv"] == pytest.approx(zeros / total)
    assert meta["compressed_bytes"] < 0.9 * meta["file_bytes"]


def test_onnx_parity_recorded(built):
    parity = json.loads((built / "onnx-fp32" / "meta.json").read_text())["figures"]["parity"]
    assert parity["max_abs_logit_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert parity["images"] == 100


@pytest.mark.parametrize("name", sorted(c.REGISTRY))
def test_reload_in_fresh_process_gives_identical_outputs(built, trained_run, session_home, name):
    code = (
        "import sys, json, torch; from vggtool.compress import load_variant; "
        "from vggtool.data import load_splits, batches; "
        f"x = next(batches(load_splits({str(session_home / 'data')!r}, val_size=100).test, 64))[0]; "
        f"out = torch.as_tensor(load_variant({str(built / name)!r}).predict(x)); "
        "print(json.dumps(out.flatten().tolist()))"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from vggtool.data import batches

    x = next(batches(load_splits(session_home / "data", val_size=100).test, 64))[0]
    here = torch.as_tensor(c.load_variant(built / name).predict(x)).flatten()
    assert torch.equal(torch.tensor(json.loads(fresh.stdout)), here)


def test_evaluate_variant_through_cli(built, trained_run, home):
    base = json.loads(invoke("evaluate", "--run-dir", str(trained_run), "--json").output)
    fused = json.loads(invoke("evaluate", "--run-dir", str(trained_run), "--variant", "static-int8-fused",
                              "--json").output)
    assert fused["model"] == "static-int8-fused" and fused["images"] == base["images"]
    assert abs(fused["top1_err"] - base["top1_err"]) <= 0.1


def test_vgg19_size_figures():
    """The report's size figures, on the full-size model with random weights."""
    torch.manual_seed(0)
    model = build_model(ArchSpec("vgg19_bn", 100)).eval()
    sizes = {"baseline": c.state_dict_mb(model),
             "dynamic-int8": c.state_dict_mb(quant_ao.dynamic(model, "int8"))}
    calib = torch.randn(4, 3, 32, 32)
    for fuse in (False, True):
        q = quant_ao.static(model, fuse=fuse, fuse_relu=False, engine="fbgemm", per_channel=True,
                            calibrate=lambda m: m(calib))
        sizes["static-int8-fused" if fuse else "static-int8"] = c.state_dict_mb(q)
    assert round(sizes["baseline"], 2) == 157.39
    assert sizes["dynamic-int8"] == pytest.approx(99.5, abs=0.1)
    assert sizes["static-int8"] == pytest.approx(39.7, abs=0.1)
    assert sizes["static-int8-fused"] == pytest.approx(39.6, abs=0.1)
    assert sizes["static-int8-fused"] < sizes["static-int8"]


def test_sparsity_over_conv_and_linear_matches_report_definition():
    model = build_model(ArchSpec("vgg19_bn", 100))
    pruned = prune.l1_unstructured(model, "global", 0.6)
    assert prune.sparsity(pruned, (nn.Conv2d,)) == pytest.approx(0.6, abs=1e-4)
    assert prune.sparsity(pruned, (nn.Conv2d, nn.Linear)) == pytest.approx(0.3056, abs=5e-4)


def test_prune_with_finetune_keeps_zeros(trained_run, home):
    invoke("prune", "--global", "--amount", "0.5", "--finetune-epochs", "1", "--run-dir", str(trained_run))
    model = c.load_variant(trained_run / "variants" / "prune-global-0.5-finetuneepochs1").model
    assert prune.sparsity(model, (nn.Conv2d,)) == pytest.approx(0.5, abs=1e-3)


def test_recipes_compose_and_record_their_chain(built, trained_run, home):
    invoke("quantize", "--dynamic", "--from-variant", "prune-global-0.6", "--run-dir", str(trained_run))
    meta = json.loads((built / "prune-global-0.6+dynamic-int8" / "meta.json").read_text())
    assert [step["name"] for step in meta["chain"]] == ["checkpoint", "prune-global-0.6"]
    model = c.load_variant(built / "prune-global-0.6+dynamic-int8").model
    assert prune.sparsity(model, (nn.Conv2d,)) == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize("args,fragment", [
    (["prune", "--global", "--amount", "1.0"], "[0, 1)"),
    (["prune", "--local", "--amount", "-0.1"], "[0, 1)"),
    (["prune"], "--global or --local"),
    (["quantize"], "exactly one of --static or --dynamic"),
    (["quantize", "--static", "--dynamic"], "exactly one"),
    (["quantize", "--static", "--dtype", "float16"], "float16"),
    (["quantize", "--static", "--engine", "nosuch"], "not available"),
    (["quantize", "--dynamic", "--checkpoint", "/nonexistent.safetensors"], "does not exist"),
    (["quantize", "--static", "--fuse"], "already exist"),
])
def test_compress_bad_input(built, trained_run, home, args, fragment):
    before = sorted(p.name for p in built.iterdir())
    one_line_error(invoke(*args, "--run-dir", str(trained_run), ok=False), fragment)
    assert sorted(p.name for p in built.iterdir()) == before
    assert not [p for p in built.iterdir() if p.name.startswith(".")]


def test_foreign_baseline_is_refused(built, trained_run, home, tmp_path):
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not a model")
    one_line_error(invoke("quantize", "--dynamic", "--checkpoint", str(other), "--run-dir", str(trained_run),
                          "--name", "x", ok=False), "not a readable")
    assert not (built / "x").exists()


def test_force_rebuilds_and_list(built, trained_run, home):
    invoke("quantize", "--dynamic", "--dtype", "float16", "--force", "--run-dir", str(trained_run))
    assert "static-int8-fused" in invoke("compress", "--list").output
