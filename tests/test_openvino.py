"""OpenVINO as a runtime: parity with ONNX Runtime, precisions read back, bad files, and no telemetry."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from vggtool import cpu, export
from vggtool import openvino_runtime as ovr
from vggtool.errors import VggtoolError
from vggtool.evaluate import compare
from vggtool.models import ArchSpec, build_model

ROOT = Path(__file__).resolve().parents[1]
# fp32 logits of the tiny model are O(1); OpenVINO and ONNX Runtime differ only in summation order
F32_ATOL = 1e-4
# bf16 keeps 8 bits of mantissa: relative error ~ 2^-8 per product, a few percent after a dozen layers
BF16_RTOL = 0.1


@pytest.fixture(scope="module")
def ov():
    ovr.no_telemetry()  # importing openvino sends an event unless telemetry is kept out first
    return pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ArchSpec("vgg11_bn", num_classes=10, width=0.125, dropout=0.0)).eval()
    for m in model.modules():  # BatchNorm away from the identity, so folding it is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ov") / "model.onnx"
    export.to_onnx(model, path)
    return path


@pytest.fixture(scope="module")
def ir_file(ov, onnx_file) -> Path:
    path = onnx_file.parent / "ir" / "model.xml"
    ov.save_model(ov.Core().read_model(str(onnx_file)), str(path), compress_to_fp16=False)
    return path


def batches(sizes=(8, 1, 5)):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, 32, 32, generator=g), torch.zeros(n, dtype=torch.long)) for n in sizes]


def single_line_error(call, *fragments) -> str:
    with pytest.raises(VggtoolError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_same_logits_as_onnxruntime_for_the_same_file(ov, onnx_file, ir_file):
    ort = export.ort_predict(export.ort_session(onnx_file, threads=1))
    for path in (onnx_file, ir_file):
        predict, _ = ovr.compile_file(path, threads=1)
        out = predict(batches()[0][0])
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (8, 10)
        found = compare(ort, predict, batches())  # batch sizes 8, 1, 5: the batch axis stays dynamic
        assert found["images"] == 14 and found["top1_agreement"] == 1.0
        assert found["max_abs_logit_diff"] < F32_ATOL, found


def test_f32_is_set_and_read_back(ov, onnx_file):
    _, settings = ovr.compile_file(onnx_file, threads=1, precision="f32")
    assert settings == {"runtime": "openvino", "openvino": ov.get_version(), "device": "CPU",
                        "performance_hint": "LATENCY", "threads": 1, "streams": 1, "precision_hint": "f32",
                        "compute_precision": "f32"}
    _, default = ovr.compile_file(onnx_file, threads=0)
    assert default["threads"] >= 1 and default["compute_precision"] == "f32"  # 0 resolves to OpenVINO's count


def test_bf16_is_refused_without_native_bf16(ov, onnx_file, monkeypatch):
    monkeypatch.setattr(cpu, "_read", lambda: ("Test CPU", {"avx2", "avx512f", "avx512_vnni"}))
    single_line_error(lambda: ovr.compile_file(onnx_file, threads=1, precision="bf16"),
                      "avx512_bf16", "amx_bf16", "Test CPU")
    single_line_error(lambda: ovr.compile_file(onnx_file, threads=1, precision="fp16"), "f32, bf16")


@pytest.mark.skipif(not cpu.has_native_bf16(), reason="this CPU has no native bf16 (avx512_bf16 or amx_bf16)")
def test_bf16_really_computes_in_bf16(ov, onnx_file):
    f32, _ = ovr.compile_file(onnx_file, threads=1, precision="f32")
    bf16, settings = ovr.compile_file(onnx_file, threads=1, precision="bf16")
    assert settings["precision_hint"] == "bf16" and settings["compute_precision"] == "bf16"
    x = batches()[0][0]
    a, b = f32(x), bf16(x)
    assert not np.array_equal(a, b)  # rounded, so really not f32
    assert np.abs(a - b).max() < BF16_RTOL * np.abs(a).max()


def damaged(folder: Path, onnx_file: Path, ir_file: Path) -> dict[str, Path]:
    folder.mkdir()
    cases = {}

    def write(name: str, data: bytes) -> Path:
        cases[name] = folder / name
        cases[name].write_bytes(data)
        return cases[name]

    onnx = onnx_file.read_bytes()
    write("truncated.onnx", onnx[: len(onnx) // 3])
    write("garbage.onnx", b"\x08\xff" * 64)
    xml, weights = ir_file.read_bytes(), ir_file.with_suffix(".bin").read_bytes()
    write("half.xml", xml[: len(xml) // 2]).with_suffix(".bin").write_bytes(weights)
    write("short-bin.xml", xml).with_suffix(".bin").write_bytes(weights[:100])
    write("no-bin.xml", xml)
    cases["missing.onnx"] = folder / "missing.onnx"
    cases["model.pt"] = onnx_file.with_suffix(".pt")
    return cases


def test_a_damaged_or_missing_file_is_one_line(ov, onnx_file, ir_file, tmp_path, capfd):
    for name, path in damaged(tmp_path / "bad", onnx_file, ir_file).items():
        message = single_line_error(functools.partial(ovr.compile_file, path, threads=1), str(path))
        assert "Traceback" not in message and ".cpp" not in message, (name, message)
    assert capfd.readouterr().err == ""  # no frontend guessing that logs to stderr


def test_missing_openvino_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what import finds where openvino is not installed
    assert not ovr.available()
    single_line_error(lambda: ovr.compile_file(ROOT / "absent.onnx", threads=1),
                      f"pip install -c requirements/report.txt openvino=={ovr.OPENVINO_PIN}")


def test_install_command_names_the_pinned_version():
    for stack in ("report", "current"):
        text = (ROOT / "requirements" / f"{stack}.txt").read_text()
        assert re.search(rf"^openvino=={re.escape(ovr.OPENVINO_PIN)}$", text, re.M), stack


# In a fresh interpreter (nncf keeps quiet by itself under pytest) with an empty home, where openvino-telemetry
# would consent by itself: after vggtool has compiled a model and nncf has been imported, the package must be
# unimportable, nncf's and openvino's converters must hold their stubs, and no consent or client-id file exists.
PROBE = """
import importlib, json, sys
from pathlib import Path
from vggtool import openvino_runtime
openvino_runtime.compile_file(Path(sys.argv[1]), threads=1)
try:
    import nncf.telemetry.wrapper as nncf_telemetry
    nncf_impl = "real" if isinstance(nncf_telemetry.telemetry, nncf_telemetry.NNCFTelemetry) else "stub"
except ImportError:
    nncf_impl = None
import openvino.tools.ovc.telemetry_utils as ovc
try:
    importlib.import_module("openvino_telemetry")
    importable = True
except ImportError:
    importable = False
print(json.dumps({"importable": importable, "nncf": nncf_impl, "ovc": ovc.tm.__name__,
                  "home": sorted(str(p) for p in Path.home().rglob("*"))}))
"""

# the control: what the installed openvino-telemetry reads decides consent, and in that home it would consent
CONTROL = """
import json
from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
result = OptInChecker().check(enable_opt_in_dialog=False, disable_in_ci=True)
print(json.dumps({"consent_file": OptInChecker().consent_file(), "would_send": result is ConsentCheckResult.NO_FILE}))
"""


def fresh_python(code: str, *args: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI", "NNCF_DEV")}
    env["HOME"] = str(home)
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_no_telemetry_is_sent(ov, onnx_file, tmp_path):
    (tmp_path / "control").mkdir()
    control = fresh_python(CONTROL, home=tmp_path / "control")
    assert control["would_send"] and control["consent_file"].startswith(str(tmp_path / "control"))
    (tmp_path / "home").mkdir()
    found = fresh_python(PROBE, str(onnx_file), home=tmp_path / "home")
    assert found["importable"] is False
    assert found["nncf"] in (None, "stub")
    assert found["ovc"] == "openvino.tools.ovc.telemetry_stub"
    assert found["home"] == []  # no ~/intel/openvino_telemetry, openvino_ga_cid or stats


def test_telemetry_loaded_too_early_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino_telemetry", types.ModuleType("openvino_telemetry"))
    single_line_error(ovr.no_telemetry, "no_telemetry() before importing openvino")
