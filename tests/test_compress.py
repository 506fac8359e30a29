"""Each recipe on a tiny model: close to fp32 within the tolerance it states, really
quantized/pruned, reloads identically; recipes compose; bad input is refused."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from vggtool import compress as c
from vggtool import quant_ao
from vggtool.compress.pruning import l1_unstructured
from vggtool.data import batches, load_splits
from vggtool.evaluate import torch_predict
from vggtool.models import ArchSpec, build_model

from .conftest import in_home, invoke, one_line_error

REPORT_VARIANTS = ["baseline", "dynamic-fp16", "dynamic-int8", "static-int8", "static-int8-fused",
                   "prune-global-0.6", "prune-local-0.6", "onnx-fp32"]


@pytest.fixture(scope="module")
def built(trained_run, session_home):
    """Every registered variant, built once through `vggtool compress`."""
    with in_home(session_home):
        invoke("compress", "--run-dir", str(trained_run), "--data-dir", str(session_home / "data"))
    return trained_run / "variants"


@pytest.fixture(scope="module")
def test_batch(session_home):
    return next(batches(load_splits(session_home / "data", val_size=100).test, 64))[0]


def fp32_logits(run, x):
    from vggtool import checkpoint

    model, _, _ = checkpoint.load_model(run / "best.safetensors")
    return torch_predict(model)(x)


def test_the_report_variants_are_registered_under_their_names():
    assert set(REPORT_VARIANTS) <= set(c.REGISTRY)
    assert {n: c.REGISTRY[n].output for n in REPORT_VARIANTS} == {
        "baseline": c.Output.FLOAT, "dynamic-fp16": c.Output.QUANTIZED, "dynamic-int8": c.Output.QUANTIZED,
        "static-int8": c.Output.QUANTIZED, "static-int8-fused": c.Output.QUANTIZED,
        "prune-global-0.6": c.Output.FLOAT, "prune-local-0.6": c.Output.FLOAT, "onnx-fp32": c.Output.ONNX}


def test_every_variant_with_meta(built, trained_run):
    assert sorted(c.SETS["report"]) == sorted(REPORT_VARIANTS)
    assert sorted(p.name for p in built.iterdir()) == sorted(REPORT_VARIANTS)  # `compress` builds the report's set
    spec = json.loads((trained_run / "config.json").read_text())["spec"]
    for name in REPORT_VARIANTS:
        recipe = c.REGISTRY[name]
        meta = json.loads((built / name / "meta.json").read_text())
        assert meta["recipe"] == recipe.to_dict() and meta["output"] == recipe.output.value
        assert c.recipe_from_dict(meta["recipe"]) == recipe
        assert ArchSpec.from_dict(meta["spec"]) == ArchSpec.from_dict(spec)
        assert len(meta["chain"][0]["sha256"]) == 64
        assert {"torch", "onnx", "onnxruntime"} <= set(meta["versions"])
        assert meta["figures"]["size_mb"] > 0 and meta["figures"]["compressed_bytes"] > 0


def within(tolerance, ref: torch.Tensor, out: torch.Tensor) -> bool:
    agreement = (out.argmax(1) == ref.argmax(1)).float().mean()
    return bool((out - ref).abs().max() <= tolerance.max_rel_diff * ref.abs().max() + 1e-6
                and agreement >= tolerance.min_agreement)


@pytest.mark.parametrize("name", [n for n in REPORT_VARIANTS if c.REGISTRY[n].tolerance is not None])
def test_outputs_follow_fp32_within_the_recipe_tolerance(built, trained_run, test_batch, name):
    tolerance = c.REGISTRY[name].tolerance
    ref = fp32_logits(trained_run, test_batch)
    out = torch.as_tensor(c.load_variant(built / name).predict(test_batch)).float()
    assert within(tolerance, ref, out)
    # the check can fail: an all-zero or a shuffled output does not pass it
    assert not within(tolerance, ref, torch.zeros_like(ref))
    assert not within(tolerance, ref, ref[torch.randperm(len(ref), generator=torch.Generator().manual_seed(0))])


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
    assert c.REGISTRY[name].tolerance is None  # pruning changes the function on purpose: checked here instead
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


def test_onnx_parity_and_input_contract_recorded(built):
    import onnx

    meta = json.loads((built / "onnx-fp32" / "meta.json").read_text())
    parity = meta["figures"]["parity"]
    assert parity["max_abs_logit_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert parity["images"] == 100
    from vggtool.data import MEAN, STD

    assert meta["input"]["layout"] == "NCHW" and meta["input"]["dtype"] == "float32"
    assert meta["input"]["mean"] == list(MEAN) and meta["input"]["std"] == list(STD)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(built / "onnx-fp32" / "model.onnx")).metadata_props}
    assert props["vggtool.input.mean"] == list(MEAN) and props["vggtool.input.shape"] == ["batch", 3, 32, 32]


@pytest.mark.parametrize("name", REPORT_VARIANTS)
def test_reload_in_fresh_process_gives_identical_outputs(built, trained_run, session_home, name):
    code = (
        "import sys, json, torch; from vggtool.compress import load_variant; "
        "from vggtool.data import load_splits, batches; "
        f"x = next(batches(load_splits({str(session_home / 'data')!r}, val_size=100).test, 64))[0]; "
        f"out = torch.as_tensor(load_variant({str(built / name)!r}).predict(x)); "
        "print(json.dumps(out.flatten().tolist()))"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    x = next(batches(load_splits(session_home / "data", val_size=100).test, 64))[0]
    here = torch.as_tensor(c.load_variant(built / name).predict(x)).flatten()
    assert torch.equal(torch.tensor(json.loads(fresh.stdout)), here)


def test_evaluate_variant_through_cli(built, trained_run, home):
    base = json.loads(invoke("evaluate", "--run-dir", str(trained_run), "--json").output)
    fused = json.loads(invoke("evaluate", "--run-dir", str(trained_run), "--variant", "static-int8-fused",
                              "--json").output)
    assert fused["model"] == "static-int8-fused" and fused["images"] == base["images"]
    assert abs(fused["top1_err"] - base["top1_err"]) <= 0.1
    assert base["top1_err"] < 0.5  # 10 classes: chance is 0.9


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
    pruned = l1_unstructured(model, "global", 0.6)
    assert c.sparsity(pruned, (nn.Conv2d,)) == pytest.approx(0.6, abs=1e-4)
    assert c.sparsity(pruned, (nn.Conv2d, nn.Linear)) == pytest.approx(0.3056, abs=5e-4)


def test_prune_with_finetune_keeps_zeros_and_changes_weights(trained_run, home):
    invoke("prune", "--global", "--amount", "0.5", "--finetune-epochs", "2", "--run-dir", str(trained_run))
    tuned = c.load_variant(trained_run / "variants" / "prune-global-0.5-finetuneepochs2")
    assert c.sparsity(tuned.model, (nn.Conv2d,)) == pytest.approx(0.5, abs=1e-3)
    from vggtool import checkpoint

    untuned = l1_unstructured(checkpoint.load_model(trained_run / "best.safetensors")[0], "global", 0.5)
    assert not torch.equal(tuned.model.features[0].weight, untuned.features[0].weight)
    finetune = tuned.meta["figures"]["finetune"]
    assert [r["epoch"] for r in finetune["history"]] == [0, 1]
    best = min(finetune["history"], key=lambda r: r["val_top1_err"])  # chosen on validation, never test
    assert finetune["best_epoch"] == best["epoch"]
    # the saved weights are the best epoch's, not the last one's
    val = json.loads(invoke("evaluate", "--run-dir", str(trained_run), "--variant", "prune-global-0.5-finetuneepochs2",
                            "--split", "val", "--json").output)
    assert val["top1_err"] == pytest.approx(best["val_top1_err"], abs=1e-9)


def test_recipes_compose_and_record_their_chain(built, trained_run, home):
    invoke("quantize", "--dynamic", "--from-variant", "prune-global-0.6", "--run-dir", str(trained_run))
    meta = json.loads((built / "prune-global-0.6+dynamic-int8" / "meta.json").read_text())
    assert [step["name"] for step in meta["chain"]] == ["checkpoint", "prune-global-0.6"]
    model = c.load_variant(built / "prune-global-0.6+dynamic-int8").model
    assert c.sparsity(model, (nn.Conv2d,)) == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize("args,fragment", [
    (["prune", "--global", "--amount", "1.0"], "[0, 1)"),
    (["prune", "--local", "--amount", "-0.1"], "[0, 1)"),
    (["prune"], "--global, --local or --structured"),
    (["quantize"], "exactly one of --static, --dynamic"),
    (["quantize", "--static", "--dynamic"], "exactly one"),
    (["quantize", "--static", "--dtype", "float16"], "float16"),
    (["quantize", "--static", "--engine", "nosuch"], "not available"),
    (["quantize", "--static", "--engine-batch", "4"], "needs --engine auto"),
    (["quantize", "--dynamic", "--checkpoint", "/nonexistent.safetensors"], "does not exist"),
    (["quantize", "--static", "--fuse"], "already exist"),
    (["quantize", "--static", "--from-variant", "static-int8"], "not a float model"),
    (["export", "--onnx", "--from-variant", "onnx-fp32"], "not a float model"),
    (["quantize", "--static", "--from-variant", "nosuch"], "no variant nosuch"),
    (["quantize", "--static", "--from-variant", "baseline", "--checkpoint", "x.safetensors"], "not both"),
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


def test_force_rebuilds(built, trained_run, home):
    folder = built / "static-int8"
    (folder / "left-from-before").write_text("x")
    assert json.loads((folder / "meta.json").read_text())["figures"]["calibration_images"] == 100
    invoke("quantize", "--static", "--calib-size", "40", "--name", "static-int8", "--force", "--run-dir",
           str(trained_run))
    assert not (folder / "left-from-before").exists()  # the folder was replaced whole
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["figures"]["calibration_images"] == 40 and meta["recipe"]["params"]["calib_size"] == 40
    c.load_variant(folder)
    invoke("quantize", "--static", "--name", "static-int8", "--force", "--run-dir", str(trained_run))
    assert json.loads((folder / "meta.json").read_text())["recipe"] == c.REGISTRY["static-int8"].to_dict()


def thinned(state: dict, keep: list[int], hidden: tuple[int, int]) -> dict:
    """A trained VGG's state_dict cut to uneven widths: the first `keep[i]` filters of conv i
    (with their BatchNorm entries and the next layer's inputs), and `hidden` classifier widths."""
    out = dict(state)
    convs = sorted(int(k.split(".")[1]) for k, v in state.items() if k.startswith("features.") and v.dim() == 4)
    prev = 3
    for idx, k in zip(convs, keep):
        out[f"features.{idx}.weight"] = state[f"features.{idx}.weight"][:k, :prev].clone()
        out[f"features.{idx}.bias"] = state[f"features.{idx}.bias"][:k].clone()
        for part in ("weight", "bias", "running_mean", "running_var"):
            out[f"features.{idx + 1}.{part}"] = state[f"features.{idx + 1}.{part}"][:k].clone()
        prev = k
    h0, h1 = hidden
    out["classifier.0.weight"] = state["classifier.0.weight"][:h0, :prev].clone()
    out["classifier.0.bias"] = state["classifier.0.bias"][:h0].clone()
    out["classifier.3.weight"] = state["classifier.3.weight"][:h1, :h0].clone()
    out["classifier.3.bias"] = state["classifier.3.bias"][:h1].clone()
    out["classifier.6.weight"] = state["classifier.6.weight"][:, :h1].clone()
    return out


def test_uneven_vgg_saves_reloads_quantizes_exports_and_evaluates(own_run, home, tmp_path):
    """A VGG whose layers were thinned unevenly rebuilds from its file alone and goes through every output kind."""
    from safetensors.torch import save_file

    from vggtool import checkpoint

    keep, hidden = [5, 11, 13, 7, 29, 17, 9, 23], (37, 19)
    state, _ = checkpoint.read(own_run / "best.safetensors")
    path = tmp_path / "uneven.safetensors"
    save_file({k: v.contiguous() for k, v in thinned(state, keep, hidden).items()}, str(path))  # no vggtool metadata

    model, spec, _ = checkpoint.load_model(path)
    assert spec.channels == tuple(keep) and spec.hidden == hidden and spec.num_classes == 10
    assert not spec.is_uniform
    for args in (["quantize", "--static", "--fuse"], ["export", "--onnx"], ["prune", "--global", "--amount", "0.3"]):
        invoke(*args, "--checkpoint", str(path), "--name", f"uneven-{args[0]}", "--run-dir", str(own_run))
    for kind in ("quantize", "export", "prune"):
        meta = json.loads((own_run / "variants" / f"uneven-{kind}" / "meta.json").read_text())
        assert ArchSpec.from_dict(meta["spec"]) == spec
    invoke("quantize", "--static", "--from-variant", "uneven-prune", "--run-dir", str(own_run))

    def evaluate(*args):
        return json.loads(invoke("evaluate", "--run-dir", str(own_run), *args, "--json").output)

    float_err = evaluate("--checkpoint", str(path))
    onnx_err = evaluate("--variant", "uneven-export")
    assert onnx_err["top1_err"] == float_err["top1_err"] and onnx_err["images"] == 100
    x = next(batches(load_splits(home / "data", val_size=100).test, 64))[0]
    ref = torch_predict(model)(x)
    for name in ("uneven-quantize", "uneven-prune+static-int8"):
        variant = c.load_variant(own_run / "variants" / name)
        assert variant.spec == spec
        assert len(quant_ao.quantized_modules(variant.model)) == 8 + 3
    out = torch.as_tensor(c.load_variant(own_run / "variants" / "uneven-quantize").predict(x))
    assert within(c.REGISTRY["static-int8-fused"].tolerance, ref, out)


def test_variant_folders_written_before_the_redesign_still_load(built, own_run, home, tmp_path):
    """meta.json of 0.1 had no "output" and a spec without per-layer channels."""
    import shutil

    for name in ("static-int8-fused", "onnx-fp32", "prune-global-0.6"):
        old = own_run / "variants" / name
        shutil.copytree(built / name, old)
        meta = json.loads((old / "meta.json").read_text())
        del meta["output"]
        meta["spec"] = {k: meta["spec"][k] for k in ("arch", "num_classes", "width", "dropout")}
        (old / "meta.json").write_text(json.dumps(meta))
        assert torch.equal(torch.as_tensor(c.load_variant(old).predict(torch.ones(2, 3, 32, 32))),
                           torch.as_tensor(c.load_variant(built / name).predict(torch.ones(2, 3, 32, 32))))
    invoke("quantize", "--dynamic", "--from-variant", "prune-global-0.6", "--run-dir", str(own_run))
    one_line_error(invoke("quantize", "--dynamic", "--from-variant", "onnx-fp32", "--run-dir", str(own_run), ok=False),
                   "not a float model")
    meta = json.loads((own_run / "variants" / "static-int8-fused" / "meta.json").read_text())
    meta["output"] = "float"
    (own_run / "variants" / "static-int8-fused" / "meta.json").write_text(json.dumps(meta))
    one_line_error(invoke("evaluate", "--variant", "static-int8-fused", "--run-dir", str(own_run), ok=False),
                   "says float output")


def test_a_compress_that_builds_nothing_prints_no_empty_table(own_run, home):
    invoke("compress", "--run-dir", str(own_run), "--variant", "baseline")
    out = invoke("compress", "--run-dir", str(own_run), "--variant", "baseline").output
    assert "kept baseline" in out and "variants in" not in out


def test_a_set_goes_on_without_a_recipe_this_stack_cannot_build(own_run, home, monkeypatch):
    from vggtool.compress import compress, quant_pt2e
    from vggtool.errors import Unavailable
    from vggtool.runs import Run

    monkeypatch.setattr(quant_pt2e, "unavailable", lambda: "torchao is not installed")
    heard = {}
    metas = compress(Run(own_run), ["pt2e-int8", "dynamic-int8"], home / "data", skip_unavailable=True,
                     on_done=lambda name, meta: heard.update({name: meta}))
    assert list(metas) == ["dynamic-int8"] and "torchao" in heard["pt2e-int8"]["unavailable"]
    assert not (own_run / "variants" / "pt2e-int8").exists()
    with pytest.raises(Unavailable):  # asked for by name, it is an error
        compress(Run(own_run), ["pt2e-int8"], home / "data")
