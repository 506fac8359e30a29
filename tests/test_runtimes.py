"""OpenVINO beside ONNX Runtime in evaluate, bench and the report: a row per (variant, runtime), settings read
back, torch variants skipped with a reason, and bad input in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vggtool import cpu, report, runtimes
from vggtool.errors import VggtoolError

from .conftest import invoke, one_line_error

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def ov():
    from vggtool import openvino_runtime

    openvino_runtime.no_telemetry()
    return pytest.importorskip("openvino")


def test_rows_of_a_variant_per_runtime():
    both = ("onnxruntime", "openvino")
    assert runtimes.plan("onnx", both, "onnx-int8") == (
        {"onnx-int8": "onnxruntime", "onnx-int8@openvino": "openvino"}, {})
    rows, skipped = runtimes.plan("quantized", both, "static-int8")
    assert rows == {"static-int8": "torch"} and skipped == {"static-int8@openvino": "a torch model runs in torch only"}
    assert runtimes.plan("onnx", ("openvino",), "onnx-fp32") == ({"onnx-fp32@openvino": "openvino"}, {})
    assert runtimes.plan("openvino", ("onnxruntime",), "nncf-int8") == ({"nncf-int8": "openvino"}, {})
    assert runtimes.variant_of("onnx-int8@openvino-bf16") == "onnx-int8"
    assert runtimes.label("int8 (ONNX Runtime)", "openvino", "onnx") == "int8 (ONNX Runtime) on OpenVINO"
    assert runtimes.label("ONNX fp32", "onnxruntime", "onnx") == "ONNX fp32"


def test_bf16_rows_only_where_the_cpu_has_native_bf16(monkeypatch):
    monkeypatch.setattr(cpu, "_read", lambda: ("Test CPU", {"avx2", "avx512_bf16"}))
    assert runtimes.expand(("onnxruntime", "openvino")) == ("onnxruntime", "openvino", "openvino-bf16")
    monkeypatch.setattr(cpu, "_read", lambda: ("Test CPU", {"avx2"}))
    assert runtimes.expand(("onnxruntime", "openvino", "openvino")) == ("onnxruntime", "openvino")
    with pytest.raises(VggtoolError, match="openvino-bf16 needs native bf16.*Test CPU"):
        runtimes.check(("openvino-bf16",))


def test_a_torch_variant_in_openvino_is_refused_in_one_line():
    with pytest.raises(VggtoolError, match="static-int8 is a torch model: it runs in torch only, not in OpenVINO"):
        runtimes.resolve("quantized", "openvino", "static-int8")
    with pytest.raises(VggtoolError, match="an OpenVINO IR: it runs in OpenVINO only, not in ONNX Runtime"):
        runtimes.resolve("openvino", "onnxruntime", "nncf-int8")


def test_old_results_name_each_rows_runtime():
    rows = {r["variant"]: r for r in report.upgrade(json.loads((FIXTURES / "results.json").read_text()))["rows"]}
    assert rows["baseline"]["runtime"] == rows["static-int8"]["runtime"] == "torch"
    assert rows["onnx-fp32"]["runtime"] == "onnxruntime"


@pytest.fixture
def onnx_run(own_run, home):
    invoke("compress", "--run-dir", str(own_run), "--variant", "baseline", "--variant", "onnx-fp32")
    return own_run


def test_bench_measures_each_onnx_variant_in_each_runtime(ov, onnx_run, tmp_path):
    out = invoke("bench", "--run-dir", str(onnx_run), "--runtime", "onnxruntime", "--runtime", "openvino",
                 "--rounds", "2", "--time-budget", "0", "--loads", "1", "--min-time", "0.01", "--threads", "1",
                 "--accuracy-images", "50", "--results-dir", str(tmp_path)).output
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["variant"]: r for r in results["rows"]}
    bf16 = cpu.has_native_bf16()
    assert set(rows) == {"baseline", "onnx-fp32", "onnx-fp32@openvino"} | ({"onnx-fp32@openvino-bf16"} if bf16 else set())
    assert [rows[k]["runtime"] for k in ("baseline", "onnx-fp32", "onnx-fp32@openvino")] == [
        "torch", "onnxruntime", "openvino"]
    ours = rows["onnx-fp32@openvino"]
    assert ours["status"] == "ok" and ours["batch_ms"] > 0 and ours["batch_speedup"] > 0
    assert ours["label"] == "ONNX fp32 on OpenVINO" and ours["compute_precision"] == "f32"
    assert "LATENCY, 1 threads, 1 stream(s), f32 hint" in ours["runtime_settings"]
    assert abs(ours["top1_err"] - rows["onnx-fp32"]["top1_err"]) <= 0.02  # the same file: at most an image apart
    if bf16:  # measured, not assumed equal to f32
        assert rows["onnx-fp32@openvino-bf16"]["compute_precision"] == "bf16"
        assert rows["onnx-fp32@openvino-bf16"]["images_accuracy"] == 50
    assert results["skipped"] == {"baseline@openvino": "a torch model runs in torch only"} | (
        {"baseline@openvino-bf16": "a torch model runs in torch only"} if bf16 else {})
    assert results["environment"]["openvino"].startswith("2026.")
    assert results["settings"]["runtime"] == ["onnxruntime", "openvino"]
    text = (tmp_path / "REPORT.md").read_text()
    assert "| Variant | Type | Runtime | Top1err |" in text and "## Runtimes" in text
    assert f"Not run in openvino{', openvino-bf16' if bf16 else ''} (a torch model runs in torch only): `baseline`." in text
    assert "ONNX fp32 on OpenVINO" in out and "not run" in out


def test_evaluate_runs_an_onnx_variant_in_openvino(ov, onnx_run):
    def evaluated(*extra):
        return json.loads(invoke("evaluate", "--run-dir", str(onnx_run), "--variant", "onnx-fp32", "--json",
                                 *extra).output)

    ort, ours = evaluated(), evaluated("--runtime", "openvino")
    assert ours["model"] == "onnx-fp32@openvino" and ours["images"] == ort["images"]
    assert abs(ours["top1_err"] - ort["top1_err"]) <= 0.01
    one_line_error(invoke("evaluate", "--run-dir", str(onnx_run), "--variant", "baseline", "--runtime", "openvino",
                          ok=False), "baseline is a torch model", "not in OpenVINO")


def test_bad_runtimes_are_one_line(onnx_run, monkeypatch):
    one_line_error(invoke("bench", "--run-dir", str(onnx_run), "--runtime", "tensorrt", ok=False), "tensorrt")
    monkeypatch.setattr(cpu, "_read", lambda: ("Test CPU", {"avx2"}))
    one_line_error(invoke("bench", "--run-dir", str(onnx_run), "--runtime", "openvino-bf16", ok=False),
                   "needs native bf16")
    monkeypatch.setitem(sys.modules, "openvino", None)  # what import finds where openvino is not installed
    for command in (["bench"], ["evaluate", "--variant", "onnx-fp32"]):
        one_line_error(invoke(*command, "--run-dir", str(onnx_run), "--runtime", "openvino", ok=False),
                       "pip install -c requirements/report.txt openvino==")
