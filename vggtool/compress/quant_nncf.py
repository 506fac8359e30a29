"""NNCF int8 for OpenVINO: the float parent exported to ONNX, read by OpenVINO, quantized by `nncf.quantize`
calibrated on validation images, and stored as an OpenVINO IR (model.xml/model.bin, fp32 where not int8). With
`--max-drop`, `nncf.quantize_with_accuracy_control` measures top-1 accuracy on the validation split and keeps the
layers that cost most in float until int8 loses at most that much; which layers stayed float is in meta.json.

Works with nncf 2.19 (the report stack, torch 2.0.1) and 3.x (current), both through their OpenVINO backend.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from dataclasses import dataclass

import numpy as np

from vggtool import export, openvino_runtime
from vggtool.compress.artifact import IR_FILE
from vggtool.compress.base import (
    Output,
    Recipe,
    Tolerance,
    apply,
    calib_seed_field,
    calib_size_field,
    offer,
    option,
    register,
)
from vggtool.compress.openvino_export import store_ir
from vggtool.data import batches
from vggtool.errors import VggtoolError

NNCF_PINS = {"report": "2.19.0", "current": "3.4.0"}  # requirements/report.txt and requirements/current.txt


@dataclass(frozen=True)
class NncfInt8(Recipe):
    """NNCF int8 for OpenVINO, calibrated on validation images (with accuracy control under --max-drop)."""

    output = Output.OPENVINO
    dtype = "int8"

    calib_size: int = calib_size_field()
    calib_seed: int = calib_seed_field()
    max_drop: float = option(0.0, "Accuracy control: the most top-1 accuracy int8 may lose on the validation "
                                  "split, a fraction in (0, 1); layers that cost most stay float (0: off).")

    def __post_init__(self):
        if self.calib_size <= 0:
            raise VggtoolError("calibration size must be positive")
        if not (self.max_drop == 0 or 0 < self.max_drop < 1):
            raise VggtoolError(f"--max-drop must be a fraction of top-1 accuracy between 0 and 1 (0.01: one point), "
                               f"or 0 for no accuracy control; got {self.max_drop:g}")

    @property
    def stem(self) -> str:
        return "nncf-int8"

    @property
    def label(self):
        control = f", accuracy control (max drop {100 * self.max_drop:g} points)" if self.max_drop else ""
        return f"NNCF Post-Training int8 (OpenVINO{control})", self.dtype

    @property
    def short(self):
        return "int8 (NNCF" + (f", max drop {100 * self.max_drop:g} pt" if self.max_drop else "") + ")"

    @property
    def tolerance(self):
        return Tolerance(0.25, 0.9)


def _nncf():
    """nncf, with telemetry kept out first and its own logging quiet; a one-line error where it is missing."""
    openvino_runtime.no_telemetry()
    try:  # its import logs a torch-version advice and torch's extension loader prints: kept off the console
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            nncf = importlib.import_module("nncf")
    except ImportError:
        raise VggtoolError(f"NNCF is not installed: pip install -c requirements/report.txt nncf=={NNCF_PINS['report']} "
                           f"(nncf=={NNCF_PINS['current']} with requirements/current.txt)") from None
    logging.getLogger("nncf").setLevel(logging.ERROR)
    return nncf


def top1(compiled, items) -> float:
    """nncf's validation function: top-1 accuracy of a compiled model over (images, labels) batches."""
    right = seen = 0
    for x, y in items:
        right += int((np.asarray(compiled(x)[0]).argmax(1) == y).sum())
        seen += len(y)
    return right / seen


def float_layers(core, model) -> tuple[list[str], list[str]]:
    """The convolutions and matrix products of an OpenVINO model that compute in float once compiled in f32 (what
    the CPU really runs, read back), and all of them."""
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    layers = openvino_runtime.layer_precisions(compiled)
    return [name for name, precision in layers.items() if precision in ("f32", "bf16", "f16")], list(layers)


def quantize(recipe: NncfInt8, model, calib: list, val: list | None):
    """The quantized OpenVINO model, and the validation accuracy before and after where accuracy control ran."""
    nncf = _nncf()
    dataset = nncf.Dataset(calib)
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())  # progress bars
    with quiet[0], quiet[1]:
        if not recipe.max_drop:
            return nncf.quantize(model, dataset, subset_size=len(calib)), {}
        validation = nncf.Dataset(val, lambda item: item[0])
        quantized = nncf.quantize_with_accuracy_control(model, dataset, validation, top1, max_drop=recipe.max_drop,
                                                        subset_size=len(calib))
    return quantized, {"validation_images": sum(len(y) for _, y in val)}


@apply.register
def _(recipe: NncfInt8, source, ctx, workdir):
    ov = openvino_runtime.openvino()
    onnx = workdir / "fp32.onnx"
    export.to_onnx(source.model, onnx)
    calib_split = ctx.calibration_subset(recipe.calib_size, recipe.calib_seed, "NNCF int8")
    calib = [x.numpy() for x, _ in batches(calib_split, ctx.batch_size)]
    val = ([(x.numpy(), y.numpy()) for x, y in batches(ctx.calibration_split("accuracy control"), ctx.batch_size)]
           if recipe.max_drop else None)
    core = ov.Core()
    model = core.read_model(str(onnx))
    quantized, figures = quantize(recipe, model, calib, val)
    kept, layers = float_layers(core, quantized)
    if len(kept) == len(layers):
        raise VggtoolError(f"--max-drop {recipe.max_drop:g} cannot be met in int8: NNCF kept all {len(layers)} weight "
                           "layers in float; allow a larger drop")
    if val is not None:
        fp32, int8 = top1(core.compile_model(model, "CPU"), val), top1(core.compile_model(quantized, "CPU"), val)
        if fp32 - int8 > recipe.max_drop + 1e-12:
            raise VggtoolError(f"--max-drop {recipe.max_drop:g} cannot be met: int8 loses {fp32 - int8:.4f} of "
                               f"top-1 accuracy on the validation split with {len(kept)} of {len(layers)} weight "
                               "layers in float; allow a larger drop")
        figures.update(val_top1_err_fp32=1 - fp32, val_top1_err_int8=1 - int8)
    path = workdir / IR_FILE
    figures.update(calibration_images=len(calib_split), calibration_split="val", float_layers=kept,
                   int8_layers=len(layers) - len(kept), weight_layers=len(layers), max_drop=recipe.max_drop,
                   nncf=_nncf().__version__)
    return store_ir(quantized, onnx, path, source, ctx, figures)


offer(NncfInt8, "quantize", "nncf", "NNCF int8 for OpenVINO, calibrated; --max-drop adds accuracy control.")
register(NncfInt8())
