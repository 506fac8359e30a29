"""ONNX export (the report's TorchScript exporter, opset 15), run with ONNX Runtime."""

from __future__ import annotations

from dataclasses import dataclass

from vggtool import export
from vggtool.compress.artifact import ONNX_FILE
from vggtool.compress.base import Built, Output, Recipe, Tolerance, apply, offer, option, register
from vggtool.data import batches
from vggtool.errors import VggtoolError
from vggtool.evaluate import compare, torch_predict


@dataclass(frozen=True)
class OnnxExport(Recipe):
    """ONNX export (the report's opset by default), run with ONNX Runtime."""

    output = Output.ONNX

    opset: int = option(15, "ONNX opset (7-21).")

    def __post_init__(self):
        if not 7 <= self.opset <= 21:
            raise VggtoolError(f"opset must be between 7 and 21, got {self.opset}")

    @property
    def stem(self) -> str:
        return "onnx-fp32"

    @property
    def label(self):
        return "ONNX", "ONNX"

    @property
    def short(self):
        return "ONNX fp32"

    @property
    def tolerance(self):
        return Tolerance(1e-4, 0.99)


@apply.register
def _(recipe: OnnxExport, source, ctx, workdir):
    path = workdir / ONNX_FILE
    export.to_onnx(source.model, path, recipe.opset)
    figures = {}
    if ctx.parity is not None:
        session = export.ort_session(path)
        figures["parity"] = compare(torch_predict(source.model), export.ort_predict(session),
                                    batches(ctx.parity(), ctx.batch_size))
    return Built(None, source.spec, figures, path, {"input": export.INPUT_CONTRACT})


offer(OnnxExport, "export", "onnx", "Export to ONNX.")
register(OnnxExport(), sets=("report",))
