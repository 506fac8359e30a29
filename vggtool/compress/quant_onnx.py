"""ONNX Runtime static int8: onnxruntime's own tools (`quant_pre_process`,
`quantize_static`), QDQ format, per-channel weights, calibrated on the validation
split. Works on any float parent (pruned models included).

x86 without AVX-512 VNNI multiplies u8 activations by s8 weights with 16-bit
intermediate sums (vpmaddubsw) that can saturate, so there the weights are
quantized to 7 bits (`reduce_range`); the choice is recorded in meta.json.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from vggtool import cpu, export
from vggtool.compress.artifact import ONNX_FILE
from vggtool.compress.base import (
    REDUCE_RANGES,
    Built,
    Output,
    Recipe,
    Tolerance,
    apply,
    calib_seed_field,
    calib_size_field,
    offer,
    option,
    per_channel_field,
    reduce_range_field,
    register,
)
from vggtool.data import batches
from vggtool.errors import VggtoolError
from vggtool.evaluate import compare, evaluate, torch_predict

CALIBRATIONS = ("minmax", "entropy", "percentile")
ACTIVATIONS = ("u8", "s8")


@dataclass(frozen=True)
class OnnxInt8(Recipe):
    """ONNX Runtime static int8 (QDQ), calibrated on validation images."""

    output = Output.ONNX
    stem_fields = ("sensitivity_images",)  # the per-layer scan is a figure: it changes no weight
    dtype = "int8"

    calibration: str = option("minmax", "How activation ranges are chosen from calibration.", choices=CALIBRATIONS)
    calib_size: int = calib_size_field()
    calib_seed: int = calib_seed_field()
    per_channel: bool = per_channel_field()
    activations: str = option("u8", "Activation type.", choices=ACTIVATIONS)
    reduce_range: str = reduce_range_field()
    exclude: tuple[str, ...] = option((), "Keep this node in float (repeatable; see the layer sensitivity).")
    opset: int = option(15, "Opset of the exported graph (10-21).")
    sensitivity_images: int = option(0, "Quantize each layer alone and record its validation error on this many "
                                        "images (0: off).")

    def __post_init__(self):
        if self.calibration not in CALIBRATIONS:
            raise VggtoolError(f"unknown calibration method {self.calibration!r}: choose one of {', '.join(CALIBRATIONS)}")
        if self.activations not in ACTIVATIONS:
            raise VggtoolError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {self.activations!r}")
        if self.reduce_range not in REDUCE_RANGES:
            raise VggtoolError(f"reduce-range must be auto, on or off, got {self.reduce_range!r}")
        if self.calib_size <= 0 or self.sensitivity_images < 0:
            raise VggtoolError("calibration size must be positive and sensitivity images >= 0")
        if not 10 <= self.opset <= 21:
            raise VggtoolError(f"opset must be between 10 and 21 for int8, got {self.opset}")

    @property
    def stem(self) -> str:
        return "onnx-int8"

    @property
    def label(self):
        return f"ONNX Runtime Static ({self.calibration})", self.dtype

    @property
    def short(self):
        notes = [self.calibration if self.calibration != "minmax" else "", "" if self.per_channel else "per-tensor",
                 f"{len(self.exclude)} layers float" if self.exclude else ""]
        return f"int8 ({', '.join(['ONNX Runtime'] + [n for n in notes if n])})"

    @property
    def tolerance(self):
        return Tolerance(0.25, 0.9)

    def reduced(self) -> bool:
        return cpu.reduce_range(self.reduce_range)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over normalised validation batches."""

    def __init__(self, split, batch_size: int, input_name: str):
        self.batches = [x.numpy() for x, _ in batches(split, batch_size)]
        self.input_name, self.i = input_name, 0

    def get_next(self):
        if self.i == len(self.batches):
            return None
        self.i += 1
        return {self.input_name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def quantize(fp32: Path, out: Path, recipe: OnnxInt8, calib, batch_size: int, only: list[str] | None = None) -> None:
    """fp32 ONNX -> pre-processed -> QDQ int8 ONNX, calibrated on `calib`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if len(calib) == 0:
        raise VggtoolError("the calibration set is empty: ONNX Runtime int8 needs validation images")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[recipe.calibration]
    kind = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}[recipe.activations]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress of their own
            quantize_static(str(fp32), str(out), _Reader(calib, batch_size, "input"), quant_format=QuantFormat.QDQ,
                            per_channel=recipe.per_channel, reduce_range=recipe.reduced(), activation_type=kind,
                            weight_type=QuantType.QInt8, calibrate_method=method,
                            nodes_to_exclude=list(recipe.exclude), nodes_to_quantize=only,
                            extra_options={"ActivationSymmetric": recipe.activations == "s8"})
    except ImportError as e:  # ORT 1.15's Entropy and Percentile calibrators import scipy
        raise VggtoolError(f"{recipe.calibration} calibration needs a package that is missing: {e}") from None


def weight_nodes(path: Path) -> list[str]:
    """The Conv and Gemm/MatMul nodes of an ONNX graph: what int8 quantizes."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


@apply.register
def _(recipe: OnnxInt8, source, ctx, workdir):
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, prepared, out = workdir / "fp32.onnx", workdir / "prepared.onnx", workdir / ONNX_FILE
    export.to_onnx(source.model, fp32, recipe.opset)
    with contextlib.redirect_stdout(io.StringIO()):
        quant_pre_process(str(fp32), str(prepared))
    nodes = weight_nodes(prepared)
    unknown = [n for n in recipe.exclude if n not in nodes]
    if unknown:
        raise VggtoolError(f"no node {unknown[0]!r} to keep in float: the graph's are {', '.join(nodes)}")
    calib = ctx.calibration_subset(recipe.calib_size, recipe.calib_seed, "ONNX Runtime int8")
    quantize(prepared, out, recipe, calib, ctx.batch_size)
    figures = {"calibration_images": len(calib), "calibration_split": "val", "calibration": recipe.calibration,
               "reduce_range": recipe.reduced(), "cpu_vnni": cpu.has_vnni(),
               "scheme": f"{recipe.activations}s8" + (" reduce_range" if recipe.reduced() else ""),
               "float_nodes": list(recipe.exclude)}
    if recipe.sensitivity_images:
        val = ctx.calibration_split("the layer sensitivity scan")
        figures["layer_sensitivity"] = layer_sensitivity(prepared, workdir, recipe, calib, val, nodes, ctx.batch_size)
    if ctx.parity is not None:
        figures["parity"] = compare(torch_predict(source.model), export.ort_predict(export.ort_session(out)),
                                    batches(ctx.parity(), ctx.batch_size))
    for tmp in (fp32, prepared):
        tmp.unlink()
    return Built(None, source.spec, figures, out, {"input": export.INPUT_CONTRACT})


def layer_sensitivity(prepared: Path, workdir: Path, recipe: OnnxInt8, calib, val, nodes: list[str],
                      batch_size: int) -> list[dict]:
    """Each weight layer quantized alone: validation error and top-1 agreement with fp32,
    so the layers that lose most can be kept in float (`--exclude`)."""
    subset = val.subset(torch.arange(min(recipe.sensitivity_images, len(val))))
    test_batches = list(batches(subset, batch_size))
    reference = export.ort_predict(export.ort_session(prepared))
    ref_err = evaluate(reference, test_batches).top1_err
    rows = []
    for node in nodes:
        single = workdir / "single.onnx"
        quantize(prepared, single, recipe, calib, batch_size, only=[node])
        predict = export.ort_predict(export.ort_session(single))
        agree = compare(reference, predict, test_batches)
        rows.append({"node": node, "val_top1_err": evaluate(predict, test_batches).top1_err,
                     "fp32_val_top1_err": ref_err, "top1_agreement": agree["top1_agreement"],
                     "max_abs_logit_diff": agree["max_abs_logit_diff"]})
        single.unlink()
    return sorted(rows, key=lambda r: (r["top1_agreement"], -r["max_abs_logit_diff"]))


offer(OnnxInt8, "quantize", "onnx", "ONNX Runtime static int8 (QDQ), calibrated.")
register(OnnxInt8(), sets=("beyond",))
