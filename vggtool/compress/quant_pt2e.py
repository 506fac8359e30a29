"""The PyTorch 2 export path: torch.export -> prepare_pt2e with the x86 Inductor
quantizer -> calibrate -> convert_pt2e -> torch.compile (torchao's PT2E flow, the
successor of eager torch.ao quantization).

A compiled model cannot be stored. The variant keeps what rebuilds it: the
prepared graph's state (float weights with BatchNorm folded, and every observer's
calibrated range) in safetensors. Loading exports the parent architecture again,
prepares it the same way, restores that state, converts and compiles; the compile
time is in meta.json and the report. Where torchao or a C++ compiler is missing
(the report's pinned torch 2.0.1 stack), the recipe says so in one line.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import time
from dataclasses import dataclass

import torch
from torch import nn

from vggtool import cpu
from vggtool.compress.artifact import state_dict_mb
from vggtool.compress.base import (
    REDUCE_RANGES,
    Built,
    Output,
    Recipe,
    Tolerance,
    apply,
    calib_seed_field,
    calib_size_field,
    finalize,
    offer,
    reduce_range_field,
    register,
    skeleton,
)
from vggtool.data import batches
from vggtool.errors import Unavailable, VggtoolError
from vggtool.models import ArchSpec, build_model


def unavailable() -> str | None:
    """Why the PT2E path cannot run here, or None when it can."""
    if importlib.util.find_spec("torchao") is None:
        return f"torchao is not installed (torch {torch.__version__}; the report's pinned stack predates PT2E)"
    if not hasattr(torch, "export") or not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.export"
    if not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        return "torch.compile needs a C++ compiler (c++, g++ or clang++) and none was found"
    return None


def _require() -> None:
    reason = unavailable()
    if reason:
        raise Unavailable(f"the PT2E path is unavailable here: {reason}")


@dataclass(frozen=True)
class Pt2eQuant(Recipe):
    """PyTorch 2 export int8 (torchao PT2E, x86 Inductor quantizer), compiled with torch.compile."""

    output = Output.QUANTIZED
    dtype = "int8"

    calib_size: int = calib_size_field()
    calib_seed: int = calib_seed_field()
    reduce_range: str = reduce_range_field()

    def __post_init__(self):
        if self.calib_size <= 0:
            raise VggtoolError(f"calibration size must be positive, got {self.calib_size}")
        if self.reduce_range not in REDUCE_RANGES:
            raise VggtoolError(f"reduce-range must be auto, on or off, got {self.reduce_range!r}")

    @property
    def stem(self) -> str:
        return "pt2e-int8"

    @property
    def label(self):
        return "PT2E + torch.compile (x86 Inductor)", self.dtype

    @property
    def short(self):
        return "int8 (PT2E, x86 Inductor)"

    @property
    def tolerance(self):
        return Tolerance(0.25, 0.9)


def _prepared(model: nn.Module, recipe: Pt2eQuant) -> nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    batch = torch.export.Dim("batch", min=1, max=65536)
    exported = torch.export.export(model.eval(), (torch.zeros(2, 3, 32, 32),), dynamic_shapes={"x": {0: batch}})
    config = get_default_x86_inductor_quantization_config(reduce_range=cpu.reduce_range(recipe.reduce_range))
    return prepare_pt2e(exported.module(), X86InductorQuantizer().set_global(config))


class Compiled(nn.Module):
    """A compiled PT2E model behind the usual module interface (exported graphs refuse eval())."""

    def __init__(self, converted: nn.Module):
        super().__init__()
        import torch._inductor.config as inductor

        inductor.freezing = True  # constant-fold the int8 weights into the compiled kernels
        object.__setattr__(self, "compiled", torch.compile(converted))  # not a child: eval() must not reach it
        self.compile_seconds: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        with torch.no_grad():
            out = self.compiled(x)
        if self.compile_seconds is None:  # the first call compiles
            self.compile_seconds = time.perf_counter() - start
        return out


@apply.register
def _(recipe: Pt2eQuant, source, ctx, workdir):
    _require()
    calib = ctx.calibration_subset(recipe.calib_size, recipe.calib_seed, "PT2E quantization")
    prepared = _prepared(source.model, recipe)
    with torch.no_grad():
        for x, _ in batches(calib, ctx.batch_size):
            prepared(x)
    converted = _converted(copy.deepcopy(prepared))  # convert_pt2e rewrites its input; the prepared state is kept
    compiled = Compiled(converted)
    compiled(torch.zeros(16, 3, 32, 32))
    figures = {"calibration_images": len(calib), "calibration_split": "val",
               "reduce_range": cpu.reduce_range(recipe.reduce_range), "compile_seconds": compiled.compile_seconds,
               "size_mb": state_dict_mb(converted), "compiled_with": f"torch {torch.__version__}"}
    return Built(prepared, source.spec, figures)  # what is stored: the calibrated, prepared graph's state


def _converted(prepared: nn.Module) -> nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    return convert_pt2e(prepared)


@skeleton.register
def _(recipe: Pt2eQuant, spec: ArchSpec):
    _require()
    return _prepared(build_model(spec), recipe)


@finalize.register
def _(recipe: Pt2eQuant, model):
    return Compiled(_converted(model))


offer(Pt2eQuant, "quantize", "pt2e", "PyTorch 2 export int8 (torchao, x86 Inductor), run with torch.compile; "
      "current stacks only.")
register(Pt2eQuant(), sets=("beyond",))
