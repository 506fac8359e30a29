"""OpenVINO as a runtime beside ONNX Runtime: an ONNX file or an OpenVINO IR (model.xml) compiled for the CPU
with explicit settings, as a predict function.

vggtool sends no usage statistics: `no_telemetry` runs before openvino is imported here, and must run before
anything else imports openvino or nncf.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import torch

from vggtool import cpu
from vggtool.errors import VggtoolError
from vggtool.evaluate import Predict

OPENVINO_PIN = "2026.4.1"  # the version in requirements/report.txt and requirements/current.txt
PRECISIONS = ("f32", "bf16")
# layers whose runtime precision is the precision the model really computes in
COMPUTE_LAYERS = {"Convolution", "FullyConnected", "MatMul", "GroupConvolution"}


def no_telemetry() -> None:
    """Keep openvino-telemetry out of this process, so nothing is sent and no consent or client-id file is written.

    The package (2025.2) consents by itself when ~/intel/openvino_telemetry is absent and the caller disables its
    opt-in dialog, as `import openvino` (through openvino.tools.ovc, which sends an import event) and `import nncf`
    both do; it reads no opt-out variable. nncf and openvino's converters import it
    inside `try/except ImportError` and fall back to their stubs, which send nothing; a None entry in sys.modules
    makes that import fail. Writing "0" into the user's consent file would opt out every other tool too.
    """
    loaded = sys.modules.get("openvino_telemetry")
    if loaded is not None:
        raise VggtoolError("openvino_telemetry was imported before vggtool could keep it out of this process; "
                           "call vggtool.openvino_runtime.no_telemetry() before importing openvino or nncf")
    sys.modules["openvino_telemetry"] = None


def _openvino():
    no_telemetry()
    try:
        return importlib.import_module("openvino")
    except ImportError:
        raise VggtoolError("OpenVINO is not installed: pip install -c requirements/report.txt "
                           f"openvino=={OPENVINO_PIN} (requirements/current.txt on the current stack)") from None


def openvino():
    """The openvino module, imported with telemetry kept out (a one-line error naming the install command where
    it is missing)."""
    return _openvino()


def available() -> bool:
    """Whether OpenVINO can be imported (with telemetry kept out first)."""
    try:
        _openvino()
    except VggtoolError:
        return False
    return True


def version() -> str:
    """OpenVINO's version (a one-line error naming the install command where it is missing)."""
    return _openvino().get_version()


def _reason(error: Exception) -> str:
    """OpenVINO's messages name C++ source lines first; the last line says what is wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:200]


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise VggtoolError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not cpu.has_native_bf16():
        raise VggtoolError(f"bf16 needs native bf16 ({' or '.join(cpu.BF16_FLAGS)}), which this CPU "
                           f"({cpu.cpu_info()['cpu_model']}) lacks; use f32")


def _read(ov, core, path: Path):
    if path.suffix not in (".onnx", ".xml"):
        raise VggtoolError(f"{path} is neither an ONNX file (.onnx) nor an OpenVINO IR (.xml)")
    if not path.is_file():
        raise VggtoolError(f"no model at {path}")
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise VggtoolError(f"{path} has no weights file {path.with_suffix('.bin').name} beside it")
    try:  # OpenVINO raises RuntimeError and its own types alike for every parse failure
        if path.suffix == ".xml":
            return core.read_model(str(path))
        # the ONNX frontend by name: read_model would try every frontend, and some log to stderr
        frontend = ov.frontend.FrontEndManager().load_by_framework("onnx")
        return frontend.convert(frontend.load(str(path)))
    except Exception as e:
        raise VggtoolError(f"{path} is not a readable model ({_reason(e)})") from None


def _type_name(value) -> str:
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def layer_precisions(compiled) -> dict[str, str]:
    """Each convolution and matrix product of a compiled model, by name, with the precision it really runs in
    ('f32', 'bf16', 'u8' or 'i8' for int8), read from OpenVINO's runtime model."""
    found = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in COMPUTE_LAYERS:
            found[op.get_friendly_name()] = info["runtimePrecision"].astype(str)
    return found


def compute_precisions(compiled) -> list[str]:
    """The precisions the compiled model's convolutions and matrix products really run in (e.g. ['bf16'],
    ['f32'], ['u8'] for int8)."""
    return sorted(set(layer_precisions(compiled).values()))


def settings(ov, compiled) -> dict:
    """The settings a compiled model runs with, read back from it: what to record beside its figures."""
    return {
        "runtime": "openvino",
        "openvino": ov.get_version(),
        "device": "CPU",
        "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "streams": int(compiled.get_property("NUM_STREAMS")),
        "precision_hint": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
        "compute_precision": "+".join(compute_precisions(compiled)),
    }


def compile_file(path: Path, threads: int, precision: str = "f32") -> tuple[Predict, dict]:
    """Compile an ONNX file or an OpenVINO IR (model.xml with its model.bin) for the CPU, for latency: one stream,
    `threads` inference threads (0: OpenVINO's default) and `precision` f32 or bf16 (f32 is set explicitly,
    since OpenVINO otherwise computes in bf16 where the CPU has it). Returns a predict function (a float32
    [B, 3, 32, 32] batch in, logits out as a numpy array) and the settings read back from the compiled model."""
    path = Path(path)
    _check_precision(precision)
    if threads < 0:
        raise VggtoolError(f"threads must be 0 (OpenVINO's default) or more, not {threads}")
    ov = _openvino()
    core = ov.Core()
    model = _read(ov, core, path)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
              "INFERENCE_PRECISION_HINT": precision}
    try:
        compiled = core.compile_model(model, "CPU", config)
    except Exception as e:
        raise VggtoolError(f"OpenVINO cannot compile {path} ({_reason(e)})") from None
    request = compiled.create_infer_request()

    def predict(x: torch.Tensor) -> np.ndarray:
        # infer() copies the output; the input may be shared, as the call is synchronous
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return request.infer({0: batch}, share_inputs=True)[0]

    return predict, settings(ov, compiled)
