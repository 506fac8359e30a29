"""Structured pruning on a tiny model: really smaller in parameters, MACs and file,
reloads identically in a fresh process, stacks with int8 and ONNX; distillation as
specified; bad input refused without leftovers."""

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from vggtool import checkpoint
from vggtool import compress as c
from vggtool.compress.pruning import L1Prune
from vggtool.compress.quant_torch import QatQuant
from vggtool.compress.structured import StructuredPrune
from vggtool.data import batches, load_splits
from vggtool.errors import VggtoolError
from vggtool.models import ArchSpec, build_model, macs, param_count
from vggtool.train import distillation

from .conftest import in_home, invoke, one_line_error


@pytest.fixture(scope="module")
def pruned(trained_run, session_home, tmp_path_factory):
    """A private run with `structured-0.5-kd` and its int8 stack, built through `compress`."""
    import shutil

    run = tmp_path_factory.mktemp("structured") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("variants", "results"))
    with in_home(session_home):
        invoke("compress", "--run-dir", str(run), "--variant", "structured-0.5-kd+static-int8-fused")
    return run


def meta(run, name):
    return json.loads((run / "variants" / name / "meta.json").read_text())


def test_pruned_model_is_smaller_in_params_macs_and_file(pruned):
    m = meta(pruned, "structured-0.5-kd")
    base = ArchSpec.from_dict(json.loads((pruned / "config.json").read_text())["spec"])
    spec = ArchSpec.from_dict(m["spec"])
    f = m["figures"]
    assert f["params_before"] == param_count(base) and f["macs_before"] == macs(base)
    assert f["params_after"] == param_count(spec) <= 0.5 * param_count(base)
    assert f["macs_after"] == macs(spec) < macs(base)
    assert all(a < b for a, b in zip(spec.channels, base.channels)) and spec.hidden[0] < base.hidden[0]
    assert spec.num_classes == base.num_classes  # the class outputs are never touched
    base_file = (pruned / "best.safetensors").stat().st_size
    assert f["file_bytes"] < 0.6 * base_file
    model = c.load_variant(pruned / "variants" / "structured-0.5-kd").model
    assert sum(p.numel() for p in model.parameters()) == param_count(spec)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_fine_tuning_with_distillation_is_recorded_and_recovers(pruned, session_home):
    f = meta(pruned, "structured-0.5-kd")["figures"]
    assert meta(pruned, "structured-0.5-kd")["recipe"]["params"]["distill"] is True
    (tuning,) = f["finetune"]
    assert [r["epoch"] for r in tuning["history"]] == list(range(5))
    best = tuning["history"][tuning["best_epoch"]]["val_top1_err"]
    assert best == min(r["val_top1_err"] for r in tuning["history"]) and best < 0.5  # chance is 0.9


def test_reloads_identically_in_a_fresh_process(pruned, session_home):
    folder = pruned / "variants" / "structured-0.5-kd"
    code = ("import json, torch; from vggtool.compress import load_variant; "
            "from vggtool.data import load_splits, batches; "
            f"x = next(batches(load_splits({str(session_home / 'data')!r}, val_size=100).test, 32))[0]; "
            f"print(json.dumps(torch.as_tensor(load_variant({str(folder)!r}).predict(x)).tolist()))")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    x = next(batches(load_splits(session_home / "data", val_size=100).test, 32))[0]
    assert torch.equal(torch.tensor(json.loads(fresh.stdout)), c.load_variant(folder).predict(x))


def test_stacked_chain_is_recorded_and_rebuilt(pruned, home):
    stacked = meta(pruned, "structured-0.5-kd+static-int8-fused")
    assert [s["name"] for s in stacked["chain"]] == ["checkpoint", "structured-0.5-kd"]
    assert stacked["chain"][1]["sha256"] == checkpoint.sha256(pruned / "variants" / "structured-0.5-kd" /
                                                              "model.safetensors")
    assert stacked["spec"] == meta(pruned, "structured-0.5-kd")["spec"]
    variant = c.load_variant(pruned / "variants" / "structured-0.5-kd+static-int8-fused")
    assert all(w.dtype == torch.qint8 for w in (m.weight() for m in variant.model.modules()
                                                if callable(getattr(m, "weight", None))))
    parent_sha = stacked["chain"][1]["sha256"]
    invoke("compress", "--run-dir", str(pruned), "--variant", "structured-0.5-kd+static-int8-fused", "--force")
    # --force rebuilt the stacked variant from the existing parent, which stayed as it was
    assert meta(pruned, "structured-0.5-kd+static-int8-fused")["chain"][1]["sha256"] == parent_sha
    invoke("export", "--onnx", "--from-variant", "structured-0.5-kd", "--run-dir", str(pruned))
    parity = meta(pruned, "structured-0.5-kd+onnx-fp32")["figures"]["parity"]
    assert parity["max_abs_logit_diff"] < 1e-4 and parity["top1_agreement"] == 1.0


def test_structured_stacks_with_onnx_runtime_static_int8(pruned, home):
    """ONNX Runtime's static int8 on the thinner model: BatchNorm folded into the convolutions,
    int8 weights and activations, the chain recorded (the fastest stack at batch 1 on AVX2)."""
    import onnx

    invoke("quantize", "--onnx", "--from-variant", "structured-0.5-kd", "--calib-size", "64",
           "--run-dir", str(pruned))
    stacked = meta(pruned, "structured-0.5-kd+onnx-int8-calibsize64")
    assert [s["name"] for s in stacked["chain"]] == ["checkpoint", "structured-0.5-kd"]
    graph = onnx.load(str(pruned / "variants" / "structured-0.5-kd+onnx-int8-calibsize64" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    spec = ArchSpec.from_dict(meta(pruned, "structured-0.5-kd")["spec"])
    assert "BatchNormalization" not in ops and ops.count("Conv") == len(spec.channels)
    weights = {i.name: i for i in graph.initializer}
    conv_inputs = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    dequant = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert all(weights[dequant[w]].data_type == onnx.TensorProto.INT8 for w in conv_inputs)
    assert stacked["figures"]["file_bytes"] < 0.5 * meta(pruned, "structured-0.5-kd")["figures"]["file_bytes"]
    assert stacked["figures"]["parity"]["top1_agreement"] > 0.8


def test_bench_and_report_show_macs_params_and_sensitivity(pruned, home, tmp_path):
    invoke("prune", "--structured", "--amount", "0.3", "--finetune-epochs", "0", "--sensitivity-images", "50",
           "--run-dir", str(pruned))
    invoke("compress", "--run-dir", str(pruned), "--variant", "baseline")
    invoke("bench", "--run-dir", str(pruned), "--variant", "baseline", "--variant", "structured-0.3-finetuneepochs0",
           "--variant", "structured-0.5-kd+static-int8-fused", "--quick", "--rounds", "1", "--time-budget", "0",
           "--min-time", "0.05",
           "--threads", "1", "--results-dir", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["variant"]: r for r in results["rows"]}
    assert rows["structured-0.3-finetuneepochs0"]["macs"] < rows["baseline"]["macs"]
    assert rows["structured-0.5-kd+static-int8-fused"]["arch_params"] <= 0.5 * rows["baseline"]["arch_params"]
    scan = results["sensitivity"]["structured-0.3-finetuneepochs0"]
    assert [r["amount"] for r in scan][:3] == [0.0, 0.1, 0.2] and scan[0]["params"] == rows["baseline"]["arch_params"]
    assert all(a["params"] > b["params"] for a, b in zip(scan, scan[1:]))
    report = (tmp_path / "REPORT.md").read_text()
    assert "## Parameters, MACs and measured speed" in report and "## Pruning sensitivity" in report


@pytest.mark.parametrize("options,check", [
    (dict(target="macs", amount=0.5), lambda before, after: macs(after) <= 0.5 * macs(before)),
    (dict(prune_linear=False, amount=0.25), lambda before, after: after.hidden == before.hidden),
    (dict(allocation="global", amount=0.5), lambda before, after: param_count(after) <= 0.5 * param_count(before)),
    (dict(importance="bn", prune_linear=False, amount=0.2), lambda b, a: param_count(a) <= 0.8 * param_count(b)),
])
def test_targets_allocations_and_importances(trained_run, options, check):
    from vggtool.compress.artifact import source_from_checkpoint

    source = source_from_checkpoint(trained_run / "best.safetensors")
    built = c.apply(StructuredPrune(finetune_epochs=0, **options), source, c.Context(), None)
    assert check(source.spec, built.spec)
    assert built.model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_iterative_steps_and_slimming_fine_tune_between(trained_run):
    from vggtool.compress.artifact import source_from_checkpoint

    calls = []

    def finetune(model, epochs, lr, schedule, extra_loss=None, float32=False):
        calls.append((sum(p.numel() for p in model.parameters()), extra_loss is not None))
        return {"epochs": epochs}

    source = source_from_checkpoint(trained_run / "best.safetensors")
    recipe = StructuredPrune(amount=0.3, steps=3, finetune_epochs=1, slimming_epochs=1, importance="bn",
                             prune_linear=False)
    built = c.apply(recipe, source, c.Context(finetune=finetune), None)
    assert len(calls) == 1 + 3 and calls[0] == (param_count(source.spec), True)  # slimming: the BN penalty term
    sizes = [n for n, _ in calls[1:]]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3  # a little more pruned each round
    assert len(built.figures["finetune"]) == 3


def test_distillation_term_on_a_hand_computed_case():
    class Fixed(nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 1.0]])

    student = torch.tensor([[1.0, 0.0]])
    for temperature, weight in ((1.0, 1.0), (2.0, 0.5)):
        # softmax by hand, then KL(teacher || student) times T^2 and the weight
        pt = [1 / (1 + math.exp(1 / temperature)), 1 / (1 + math.exp(-1 / temperature))]
        ps = [pt[1], pt[0]]
        kl = sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))
        got = distillation(Fixed(), temperature, weight)(torch.zeros(1, 3, 32, 32), student)
        assert float(got) == pytest.approx(weight * temperature**2 * kl, rel=1e-6)
    assert abs(float(distillation(Fixed(), 3.0, 1.0)(torch.zeros(1), torch.tensor([[0.0, 1.0]])))) < 1e-5


def test_unstructured_pruning_can_distill_too(own_run, home):
    invoke("prune", "--global", "--amount", "0.5", "--finetune-epochs", "1", "--distill", "--temperature", "2",
           "--run-dir", str(own_run))
    m = meta(own_run, "prune-global-0.5-kd-finetuneepochs1-temperature2")
    assert m["recipe"]["params"]["distill"] is True and len(m["figures"]["finetune"]["history"]) == 1


@pytest.mark.parametrize("args,fragment", [
    (["--amount", "1.0"], "(0, 1)"),
    (["--amount", "0"], "(0, 1)"),
    (["--amount", "-0.2"], "(0, 1)"),
    (["--amount", "0.9999", "--finetune-epochs", "0"], "every channel of a layer"),
    (["--finetune-epochs", "0", "--distill"], "--finetune-epochs"),
    (["--importance", "bn"], "--keep-linear"),
    (["--linear-amount", "0.2"], "applies to --global or --local only"),
    (["--teacher", "nosuch", "--distill", "--finetune-epochs", "1"], "nosuch does not exist"),
    (["--from-variant", "nosuch"], "no variant nosuch"),
    (["--finetune-epochs", "1", "--data-dir", "/nonexistent-data"], "vggtool data"),
])
def test_structured_bad_input(own_run, home, args, fragment):
    one_line_error(invoke("prune", "--structured", *args, "--run-dir", str(own_run), ok=False), fragment)
    variants = own_run / "variants"
    assert not variants.exists() or not [p for p in variants.iterdir() if p.name.startswith("structured")]


def test_stacking_onto_a_quantized_parent_and_a_foreign_teacher_are_refused(own_run, home, tmp_path):
    invoke("quantize", "--dynamic", "--run-dir", str(own_run))
    one_line_error(invoke("prune", "--structured", "--from-variant", "dynamic-int8", "--run-dir", str(own_run),
                          ok=False), "not a float model")
    other = tmp_path / "teacher100.safetensors"
    spec = ArchSpec("vgg11_bn", 100, 0.125)
    checkpoint.save(other, build_model(spec).state_dict(), {"spec": spec.to_dict()})
    one_line_error(invoke("prune", "--structured", "--distill", "--finetune-epochs", "1", "--teacher", str(other),
                          "--run-dir", str(own_run), ok=False), "100 classes")
    assert not [p for p in (own_run / "variants").iterdir() if p.name.startswith(("structured", "."))]


def test_recipe_validation():
    with pytest.raises(VggtoolError, match="unknown importance"):
        StructuredPrune(importance="taylor")
    with pytest.raises(VggtoolError, match="steps"):
        StructuredPrune(steps=0)


@pytest.mark.parametrize("recipe", [
    StructuredPrune(amount=0.3, distill=True, finetune_epochs=1, temperature=2.0, distill_weight=0.5),
    QatQuant(distill=True, finetune_epochs=1, temperature=2.0, distill_weight=0.5),
    L1Prune("global", 0.5, distill=True, finetune_epochs=1, temperature=2.0, distill_weight=0.5),
], ids=lambda r: type(r).__name__)
def test_distilling_recipes_fine_tune_with_the_parents_kd_term(trained_run, recipe):
    """Every recipe that distils hands fine-tuning the KD term of its parent (and without --distill, none)."""
    import dataclasses

    from vggtool.compress.artifact import source_from_checkpoint

    source = source_from_checkpoint(trained_run / "best.safetensors")
    x = torch.rand(4, 3, 32, 32)
    student = torch.randn(4, source.spec.num_classes)
    expected = distillation(source.model, recipe.temperature, recipe.distill_weight)(x, student)
    given = []

    def finetune(model, epochs, lr, schedule, extra_loss=None, float32=False):
        given.append(extra_loss)
        assert float32 is isinstance(recipe, QatQuant)  # QAT alone asks for float32 (fake-quant refuses bf16)
        return {"epochs": epochs, "history": []}

    ctx = c.Context(finetune=finetune)
    c.apply(recipe, source, ctx, None)
    assert len(given) == 1 and given[0] is not None
    assert float(given[0](x, student)) == pytest.approx(float(expected), rel=1e-5) and float(expected) > 0
    plain = dataclasses.replace(recipe, distill=False)
    given.clear()
    c.apply(plain, source, ctx, None)
    assert given == [None]
