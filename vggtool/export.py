"""ONNX export (TorchScript exporter, as the report), checking, and ONNX Runtime inference."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vggtool.data import MEAN, STD
from vggtool.errors import VggtoolError

# What the exported graph expects; a deployer finds it in meta.json and in the
# ONNX file's own metadata (onnx.load(path).metadata_props).
INPUT_CONTRACT = {
    "name": "input",
    "layout": "NCHW",
    "shape": ["batch", 3, 32, 32],
    "dtype": "float32",
    "channel_order": "RGB",
    "preprocessing": "pixels / 255, then (x - mean) / std per channel",
    "mean": list(MEAN),
    "std": list(STD),
    "output": "logits [batch, num_classes] (no softmax)",
}


def to_onnx(model: nn.Module, path: Path, opset: int = 15) -> None:
    """Export with a dynamic batch axis and constant folding, then run onnx.checker."""
    import onnx

    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the report's TorchScript exporter; the dynamo one needs onnxscript
    model = model.eval().cpu()
    dummy = torch.zeros(1, 3, 32, 32)
    # torch 2.0's exporter prints a diagnostic banner to stdout; keep the console clean
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, dummy, str(path), opset_version=opset, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              do_constant_folding=True, **kwargs)
        except Exception as e:
            raise VggtoolError(f"ONNX export failed at opset {opset}: {e}") from None
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {f"vggtool.input.{k}": json.dumps(v) for k, v in INPUT_CONTRACT.items()})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def ort_session(path: Path, threads: int = 0):
    """An ONNX Runtime CPU session, created only after the file passes onnx.checker;
    `threads` > 0 sets the intra-op pool size."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # onnx raises checker, protobuf and OS errors alike for a bad file
        raise VggtoolError(f"{path} fails the ONNX checker ({' '.join(str(e).split())[:200]})") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise VggtoolError(f"{path} is not a loadable ONNX model ({e})") from None


def ort_predict(session):
    """Adapter from an ONNX Runtime session to the project's predict function."""
    name = session.get_inputs()[0].name

    def predict(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {name: x.detach().cpu().contiguous().numpy()})[0]

    return predict
