"""OpenVINO IR export: the float parent through ONNX (the route that works on both stacks: OpenVINO's PyTorch
frontend does not import on torch 2.0.1) into model.xml/model.bin, weights kept in fp32, run with OpenVINO."""

from __future__ import annotations

from dataclasses import dataclass

from vggtool import export, openvino_runtime
from vggtool.compress.artifact import IR_FILE
from vggtool.compress.base import Built, Output, Recipe, Tolerance, apply, offer, register
from vggtool.data import batches
from vggtool.evaluate import compare, torch_predict


@dataclass(frozen=True)
class OpenvinoExport(Recipe):
    """OpenVINO IR export in fp32 (through ONNX), run with OpenVINO."""

    output = Output.OPENVINO

    @property
    def stem(self) -> str:
        return "openvino-fp32"

    @property
    def label(self):
        return "OpenVINO IR", "OpenVINO IR"

    @property
    def short(self):
        return "OpenVINO IR fp32"

    @property
    def tolerance(self):
        return Tolerance(1e-4, 0.99)


@apply.register
def _(recipe: OpenvinoExport, source, ctx, workdir):
    ov = openvino_runtime.openvino()
    onnx, path = workdir / "fp32.onnx", workdir / IR_FILE
    export.to_onnx(source.model, onnx)
    # compress_to_fp16=False: save_model halves the weights by default, which would not be an fp32 export
    return store_ir(ov.Core().read_model(str(onnx)), onnx, path, source, ctx, {})


def store_ir(model, onnx, path, source, ctx, figures: dict) -> Built:
    """Save an OpenVINO model as the variant's IR with its weights as they are (save_model would halve float
    weights by default), drop the ONNX file it came from, and check it against the torch parent."""
    ov = openvino_runtime.openvino()
    ov.save_model(model, str(path), compress_to_fp16=False)
    onnx.unlink()
    figures = {**figures, "openvino": ov.get_version()}
    if ctx.parity is not None:
        predict, _ = openvino_runtime.compile_file(path, 0)
        figures["parity"] = compare(torch_predict(source.model), predict, batches(ctx.parity(), ctx.batch_size))
    return Built(None, source.spec, figures, path, {"input": export.INPUT_CONTRACT})


offer(OpenvinoExport, "export", "openvino", "Export to an OpenVINO IR in fp32 (model.xml and model.bin).")
register(OpenvinoExport())
