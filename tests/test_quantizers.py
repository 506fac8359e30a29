"""ONNX Runtime int8 and quantization-aware training on a tiny model: close to fp32
within the stated tolerance, really int8, reloadable, benched; bad input refused."""

import json

import onnx
import pytest
import torch
from torch import nn

from vggtool import compress as c
from vggtool import quant_ao
from vggtool.compress.quant_onnx import OnnxInt8
from vggtool.compress.quant_torch import QatQuant
from vggtool.cpu import has_vnni
from vggtool.data import batches, load_splits

from .conftest import in_home, invoke, one_line_error


@pytest.fixture(scope="module")
def quantized(trained_run, session_home, tmp_path_factory):
    import shutil

    run = tmp_path_factory.mktemp("quantizers") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("variants", "results"))
    with in_home(session_home):
        invoke("compress", "--run-dir", str(run), "--variant", "baseline", "--variant", "onnx-fp32")
        invoke("quantize", "--onnx", "--sensitivity-images", "50", "--run-dir", str(run))
        invoke("quantize", "--qat", "--finetune-epochs", "2", "--distill", "--run-dir", str(run))
    return run


def meta(run, name):
    return json.loads((run / "variants" / name / "meta.json").read_text())


def int8_weights(graph) -> list:
    """int8 initializers of two or more dimensions: weights, not per-channel zero points."""
    return [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]


def logits(run, name, x):
    return torch.as_tensor(c.load_variant(run / "variants" / name).predict(x)).float()


@pytest.fixture(scope="module")
def x(session_home):
    return next(batches(load_splits(session_home / "data", val_size=100).test, 64))[0]


def test_onnx_int8_follows_fp32_within_its_tolerance(quantized, x):
    from .test_compress import within

    ref = logits(quantized, "baseline", x)
    assert within(OnnxInt8().tolerance, ref, logits(quantized, "onnx-int8", x))
    assert not within(OnnxInt8().tolerance, ref, torch.zeros_like(ref))


def test_onnx_int8_is_int8_qdq_and_records_its_scheme(quantized):
    m = meta(quantized, "onnx-int8")
    f = m["figures"]
    assert m["output"] == "onnx" and f["calibration_split"] == "val" and f["calibration_images"] == 100
    assert f["reduce_range"] == (not has_vnni()) and f["cpu_vnni"] == has_vnni()  # auto: the CPU decides
    assert f["scheme"].startswith("u8s8")
    graph = onnx.load(str(quantized / "variants" / "onnx-int8" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= 11
    assert len(int8_weights(graph)) == 8 + 3  # every Conv and Gemm weight
    fp32_size = meta(quantized, "onnx-fp32")["figures"]["file_bytes"]
    assert f["file_bytes"] < 0.4 * fp32_size
    assert f["parity"]["top1_agreement"] >= 0.9


def test_layer_sensitivity_covers_every_weight_layer(quantized):
    rows = meta(quantized, "onnx-int8")["figures"]["layer_sensitivity"]
    assert len(rows) == 11 and len({r["node"] for r in rows}) == 11
    # each row scores its own layer quantized alone: one model scored eleven times would give one figure
    assert all(r["max_abs_logit_diff"] > 0 for r in rows) and len({r["max_abs_logit_diff"] for r in rows}) >= 6
    assert rows == sorted(rows, key=lambda r: (r["top1_agreement"], -r["max_abs_logit_diff"]))


def test_exclude_keeps_a_layer_in_float(quantized, home):
    node = meta(quantized, "onnx-int8")["figures"]["layer_sensitivity"][0]["node"]
    invoke("quantize", "--onnx", "--exclude", node, "--calibration", "entropy", "--name", "ort-excl", "--run-dir",
           str(quantized))
    graph = onnx.load(str(quantized / "variants" / "ort-excl" / "model.onnx")).graph
    excluded = next(n for n in graph.node if n.name == node)
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert producers.get(excluded.input[1]) != "DequantizeLinear"  # its weight is a plain float initializer
    assert meta(quantized, "ort-excl")["figures"]["float_nodes"] == [node]
    assert len(int8_weights(graph)) == 10


def test_qat_trains_between_prepare_and_convert(quantized, x):
    m = meta(quantized, "qat-int8-kd-finetuneepochs2")
    assert m["recipe"]["params"]["distill"] is True and len(m["figures"]["finetune"]["history"]) == 2
    model = c.load_variant(quantized / "variants" / "qat-int8-kd-finetuneepochs2").model
    weights = [mod.weight() for mod in model.modules() if callable(getattr(mod, "weight", None))]
    assert len(weights) == 8 + 3 and all(w.dtype == torch.qint8 for w in weights)
    assert not any("BatchNorm" in type(mod).__name__ for mod in model.modules())  # folded on convert
    ref = logits(quantized, "baseline", x)
    out = logits(quantized, "qat-int8-kd-finetuneepochs2", x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.8 and not torch.equal(out, ref)


def test_qat_and_onnx_int8_are_benched_and_reported(quantized, home, tmp_path):
    invoke("bench", "--run-dir", str(quantized), "--variant", "baseline", "--variant", "onnx-int8", "--variant",
           "qat-int8-kd-finetuneepochs2", "--quick", "--rounds", "1", "--time-budget", "0", "--min-time", "0.05",
           "--threads", "1", "--results-dir", str(tmp_path))
    rows = {r["variant"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert all(r["status"] == "ok" and r["batch_ms"] > 0 for r in rows.values())
    base = rows["baseline"]["top1_err"]
    assert rows["onnx-int8"]["top1_err"] <= base + 0.1 and rows["qat-int8-kd-finetuneepochs2"]["top1_err"] <= base + 0.2
    # each row names the engine its torch int8 weights were packed for; other runtimes have none
    assert [rows[n]["engine"] for n in ("baseline", "onnx-int8", "qat-int8-kd-finetuneepochs2")] == [None, None, "fbgemm"]
    # the fine-tuning section states QAT's epochs in float32, whatever the CPU offers
    assert "| QAT int8, distilled | 2 | 0.001 | fp32 |" in (tmp_path / "REPORT.md").read_text()  # its fine-tuning, by label
    report = (tmp_path / "REPORT.md").read_text()
    assert "ONNX Runtime Static (minmax)" in report and "Quantization-Aware Training (KD)" in report
    assert "## int8 sensitivity per layer: int8 (ONNX Runtime)" in report


def test_torch_ao_prepare_for_qat_has_fake_quantization():
    from vggtool.models import ArchSpec, build_model

    prepared = quant_ao.prepare_static(build_model(ArchSpec("vgg11_bn", 10, 0.125)), fuse=True, fuse_relu=False,
                                       engine="fbgemm", per_channel=True, qat=True)
    kinds = {type(m).__name__ for m in prepared.modules()}
    assert prepared.training and "ConvBn2d" in kinds and any("FakeQuantize" in k for k in kinds)


@pytest.mark.parametrize("args,fragment", [
    (["--onnx", "--calibration", "median"], "Invalid value for '--calibration'"),
    (["--onnx", "--exclude", "nosuch-node"], "no node 'nosuch-node'"),
    (["--onnx", "--finetune-epochs", "2"], "applies to --qat only"),
    (["--qat", "--finetune-epochs", "0"], "at least 1"),
    (["--qat", "--data-dir", "/nonexistent-data"], "vggtool data"),
    (["--static", "--calibration", "entropy"], "applies to --onnx only"),
])
def test_quantizer_bad_input(own_run, home, args, fragment):
    one_line_error(invoke("quantize", *args, "--run-dir", str(own_run), ok=False), fragment)
    variants = own_run / "variants"
    assert not variants.exists() or not list(variants.iterdir())


def test_empty_calibration_set_is_refused(own_run, home):
    config = json.loads((own_run / "config.json").read_text())
    config["config"]["val_size"] = 0
    (own_run / "config.json").write_text(json.dumps(config))
    one_line_error(invoke("quantize", "--onnx", "--run-dir", str(own_run), ok=False), "validation split is empty")
    assert not (own_run / "variants").exists() or not list((own_run / "variants").iterdir())


def test_an_onnx_file_failing_the_checker_is_refused(quantized, home, tmp_path):
    import shutil

    bad = quantized / "variants" / "onnx-bad"
    shutil.copytree(quantized / "variants" / "onnx-fp32", bad)
    model = onnx.load(str(bad / "model.onnx"))
    model.graph.node[0].input[0] = "no-such-tensor"
    onnx.save(model, str(bad / "model.onnx"))
    one_line_error(invoke("evaluate", "--variant", "onnx-bad", "--run-dir", str(quantized), ok=False), "sha256")
    meta = json.loads((bad / "meta.json").read_text())
    del meta["sha256"]  # a folder without recorded sums (or an edited one): the checker still stands guard
    (bad / "meta.json").write_text(json.dumps(meta))
    one_line_error(invoke("evaluate", "--variant", "onnx-bad", "--run-dir", str(quantized), ok=False),
                   "fails the ONNX checker")
    shutil.rmtree(bad)


def test_recipe_validation():
    from vggtool.errors import VggtoolError

    with pytest.raises(VggtoolError, match="unknown calibration"):
        OnnxInt8(calibration="median")
    with pytest.raises(VggtoolError, match="at least 1"):
        QatQuant(finetune_epochs=0)


PT2E_REASON = __import__("vggtool.compress.quant_pt2e", fromlist=["unavailable"]).unavailable()


@pytest.mark.skipif(PT2E_REASON is not None, reason=f"PT2E unavailable: {PT2E_REASON}")
def test_pt2e_builds_compiles_reloads_and_follows_fp32(own_run, home, x):
    import subprocess
    import sys

    invoke("compress", "--run-dir", str(own_run), "--variant", "baseline")
    invoke("quantize", "--pt2e", "--run-dir", str(own_run))
    m = meta(own_run, "pt2e-int8")
    assert m["figures"]["compile_seconds"] > 0 and m["figures"]["calibration_split"] == "val"
    ref = logits(own_run, "baseline", x)
    out = logits(own_run, "pt2e-int8", x)
    assert within_tolerance(ref, out)
    code = ("import json, torch; from vggtool.compress import load_variant; "
            f"x = torch.load({str(own_run / 'x.pt')!r}); "
            f"print(json.dumps(torch.as_tensor(load_variant({str(own_run / 'variants' / 'pt2e-int8')!r}).predict(x))"
            ".tolist()))")
    torch.save(x, own_run / "x.pt")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert torch.allclose(torch.tensor(json.loads(fresh.stdout.splitlines()[-1])), out, atol=1e-4)


def within_tolerance(ref, out) -> bool:
    from vggtool.compress.quant_pt2e import Pt2eQuant

    from .test_compress import within

    return within(Pt2eQuant().tolerance, ref, out)


@pytest.mark.skipif(PT2E_REASON is None, reason="PT2E is available on this stack")
def test_pt2e_unavailable_is_one_line(own_run, home):
    one_line_error(invoke("quantize", "--pt2e", "--run-dir", str(own_run), ok=False), "PT2E path is unavailable",
                   PT2E_REASON)
    assert not (own_run / "variants").exists() or not list((own_run / "variants").iterdir())


def test_fbgemm_and_x86_int8_variants_loaded_side_by_side_give_what_each_gives_alone(own_run, home, x):
    """The quantized engine is one global setting of torch, but weights are packed for the engine set when a
    variant loads (its recipe's, recorded in meta.json) and run on that packing: benched side by side in one
    process, an fbgemm and an x86 variant each give what they give when loaded alone, whatever the engine is."""
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch build has no x86 quantized engine")
    invoke("quantize", "--static", "--fuse", "--run-dir", str(own_run))
    invoke("quantize", "--static", "--fuse", "--engine", "x86", "--run-dir", str(own_run))
    names = ["static-int8-fused", "static-int8-fused-enginex86"]
    assert [meta(own_run, n)["recipe"]["params"].get("engine", "fbgemm") for n in names] == ["fbgemm", "x86"]
    alone = {name: logits(own_run, name, x) for name in names}
    loaded = {name: c.load_variant(own_run / "variants" / name) for name in names}
    for engine in ("fbgemm", "x86"):
        torch.backends.quantized.engine = engine
        for name, variant in loaded.items():
            assert torch.equal(torch.as_tensor(variant.predict(x)).float(), alone[name])


def fake_engine_timings(monkeypatch, ms: dict[str, tuple[float, float]]):
    """The bench's timing primitives answering `ms[engine]` = (batch 1, batch) ms per image, for the engine in use."""
    from vggtool.bench import timing

    def now():
        return ms[torch.backends.quantized.engine]

    monkeypatch.setattr(timing, "batch_timing", lambda *a, **k: timing.Timing((now()[1],), 1, now()[1] / 1000))
    monkeypatch.setattr(timing, "batch1_times", lambda *a, **k: [now()[0]])


def test_engine_auto_times_both_engines_and_keeps_the_faster_at_its_batch(own_run, home, x, monkeypatch):
    """`--engine auto` records fbgemm's and x86's timings at batch 1 and at --engine-batch, with the CPU, in
    meta.json, and the variant loads packed for the engine that was faster at that batch: the same int8
    weights as fbgemm's from one calibration, only packed for another engine."""
    from vggtool.cpu import cpu_info

    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch build has no x86 quantized engine")
    invoke("quantize", "--static", "--fuse", "--engine", "auto", "--engine-batch", "4", "--run-dir", str(own_run))
    choice = meta(own_run, "static-int8-fused-engineauto-enginebatch4")["figures"]["engine"]
    ms = choice["ms_per_image"]
    assert set(ms) == {"1", "4"} and all(set(per) == {"fbgemm", "x86"} for per in ms.values())
    assert all(v > 0 for per in ms.values() for v in per.values())
    assert choice["chosen"] == choice["by_batch"]["4"] and choice["for_batch"] == 4
    assert choice["cpu_flags"] == cpu_info()["cpu_flags"] and choice["threads"] >= 1
    # forced timings: x86 the faster at the batch, fbgemm at batch 1
    fake_engine_timings(monkeypatch, {"fbgemm": (1.0, 2.0), "x86": (1.5, 1.0)})
    invoke("quantize", "--static", "--fuse", "--engine", "auto", "--engine-batch", "8", "--run-dir", str(own_run))
    choice = meta(own_run, "static-int8-fused-engineauto-enginebatch8")["figures"]["engine"]
    assert choice["by_batch"] == {"1": "fbgemm", "8": "x86"} and choice["chosen"] == "x86"
    auto = c.load_variant(own_run / "variants" / "static-int8-fused-engineauto-enginebatch8")
    assert torch.backends.quantized.engine == "x86"  # packed for the chosen engine at load
    invoke("quantize", "--static", "--fuse", "--run-dir", str(own_run))
    fbgemm = c.load_variant(own_run / "variants" / "static-int8-fused")
    assert int8_values(auto.model.state_dict()) == int8_values(fbgemm.model.state_dict())


def int8_values(state: dict) -> dict:
    """Each tensor of a quantized state_dict as plain lists: integers, scales and zero points spelled out."""
    out = {}
    for key, value in state.items():
        for i, t in enumerate(value if isinstance(value, tuple) else (value,)):
            if not isinstance(t, torch.Tensor):
                out[f"{key}.{i}"] = repr(t)
            elif t.is_quantized:
                scales = t.q_per_channel_scales() if t.qscheme() == torch.per_channel_affine else torch.tensor(t.q_scale())
                out[f"{key}.{i}"] = (t.int_repr().tolist(), scales.tolist())
            else:
                out[f"{key}.{i}"] = t.tolist()
    return out


def test_engine_auto_picks_per_batch_size_from_the_timings(monkeypatch):
    """The choice follows the timings at each batch size; a near tie keeps fbgemm, the report's engine."""
    from vggtool.compress import engine_choice
    from vggtool.data import Split

    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch build has no x86 quantized engine")
    monkeypatch.setattr(engine_choice.quant_ao, "repacked", lambda state, skeleton, e: nn.Identity())
    images = Split(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.long))
    fake_engine_timings(monkeypatch, {"fbgemm": (1.0, 2.0), "x86": (1.5, 1.0)})
    choice, _ = engine_choice.choose({}, lambda e: nn.Identity(), images, 4)
    assert choice["by_batch"] == {"1": "fbgemm", "4": "x86"} and choice["chosen"] == "x86"
    fake_engine_timings(monkeypatch, {"fbgemm": (2.0, 1.0), "x86": (1.0, 0.99)})  # x86 1% faster at the batch
    choice, _ = engine_choice.choose({}, lambda e: nn.Identity(), images, 4)
    assert choice["by_batch"] == {"1": "x86", "4": "fbgemm"} and choice["chosen"] == "fbgemm"
    assert set(engine_choice.choose({}, lambda e: nn.Identity(), images, 1)[0]["ms_per_image"]) == {"1"}
