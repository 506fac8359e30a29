"""NNCF int8 for OpenVINO on a tiny trained model: int8 really, stored as an IR with sha256 verified, accuracy
control keeping layers float only when asked, and bad input in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vggtool import compress as c
from vggtool.compress import quant_nncf
from vggtool.errors import VggtoolError

from .conftest import invoke, one_line_error


@pytest.fixture(scope="module")
def nncf():
    from vggtool import openvino_runtime

    openvino_runtime.no_telemetry()
    pytest.importorskip("openvino")
    return pytest.importorskip("nncf")


def quantize(run, *extra, ok=True):
    return invoke("quantize", "--nncf", "--calib-size", "50", "--run-dir", str(run), "--name", "nncf", *extra, ok=ok)


def test_nncf_int8_holds_int8_weights_and_runs_in_openvino(nncf, own_run, home):
    quantize(own_run)
    folder = own_run / "variants" / "nncf"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["output"] == "openvino" and set(meta["sha256"]) == {"model.xml", "model.bin"}
    f = meta["figures"]
    assert f["float_layers"] == [] and f["int8_layers"] == f["weight_layers"] == 11  # vgg11: 8 conv + 3 linear
    assert f["calibration_images"] == 50 and f["calibration_split"] == "val" and f["nncf"] == nncf.__version__
    assert f["size_mb"] == pytest.approx(((folder / "model.xml").stat().st_size
                                          + (folder / "model.bin").stat().st_size) / 1e6)
    assert "FakeQuantize" in (folder / "model.xml").read_text()
    variant = c.load_variant(folder, threads=1)
    assert variant.runtime == "openvino" and variant.settings["compute_precision"] in ("i8", "u8", "i8+u8")
    assert f["parity"]["top1_agreement"] >= c.REGISTRY["nncf-int8"].tolerance.min_agreement
    x = torch.randn(4, 3, 32, 32)
    assert np.asarray(variant.predict(x)).shape == (4, 10)
    one_line_error(invoke("evaluate", "--run-dir", str(own_run), "--variant", "nncf", "--runtime",
                          "onnxruntime", ok=False), "an OpenVINO IR", "not in ONNX Runtime")
    (folder / "model.bin").write_bytes((folder / "model.bin").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(VggtoolError, match="does not match the sha256"):
        c.load_variant(folder)


def test_accuracy_control_with_a_loose_drop_keeps_every_layer_int8(nncf, own_run, home):
    quantize(own_run, "--max-drop", "0.5")
    f = json.loads((own_run / "variants" / "nncf" / "meta.json").read_text())["figures"]
    assert f["float_layers"] == [] and f["max_drop"] == 0.5 and f["validation_images"] == 100
    assert f["val_top1_err_int8"] - f["val_top1_err_fp32"] <= 0.5


def test_an_impossible_drop_says_so_in_one_line(nncf, own_run, home, monkeypatch):
    def any_int8_fails(compiled, items):  # a metric only a float model passes: no drop is met in int8
        from vggtool.openvino_runtime import compute_precisions

        return 1.0 if compute_precisions(compiled) == ["f32"] else 0.0

    monkeypatch.setattr(quant_nncf, "top1", any_int8_fails)
    one_line_error(quantize(own_run, "--max-drop", "0.01", ok=False), "--max-drop 0.01 cannot be met")
    assert not (own_run / "variants" / "nncf").exists()


@pytest.mark.parametrize("drop", ["1.5", "-0.1", "1"])
def test_max_drop_out_of_range_is_one_line(own_run, home, drop):
    one_line_error(quantize(own_run, "--max-drop", drop, ok=False), "--max-drop must be a fraction")


def test_openvino_export_is_fp32_and_follows_torch(nncf, own_run, home):
    invoke("export", "--openvino", "--run-dir", str(own_run))
    folder = own_run / "variants" / "openvino-fp32"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["output"] == "openvino" and set(meta["sha256"]) == {"model.xml", "model.bin"}
    tolerance = c.REGISTRY["openvino-fp32"].tolerance
    assert meta["figures"]["parity"]["top1_agreement"] >= tolerance.min_agreement
    assert meta["figures"]["parity"]["max_abs_logit_diff"] < 1e-3
    xml = (folder / "model.xml").read_text()
    assert 'element_type="f16"' not in xml and "FakeQuantize" not in xml  # weights kept in fp32
    variant = c.load_variant(folder, threads=1)
    assert variant.runtime == "openvino" and variant.settings["compute_precision"] == "f32"
    one_line_error(invoke("export", "--onnx", "--openvino", "--run-dir", str(own_run), ok=False), "choose exactly one")
