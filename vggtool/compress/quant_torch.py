"""Eager torch.ao post-training quantization: dynamic (Linear layers) and static int8.

Every torch.ao call goes through `vggtool.quant_ao`; this module only says
what each recipe is and how its result is built and rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vggtool import quant_ao
from vggtool.compress import engine_choice
from vggtool.compress.base import (
    Built,
    FineTuning,
    Output,
    Recipe,
    Tolerance,
    apply,
    calib_seed_field,
    calib_size_field,
    for_loading,
    offer,
    option,
    per_channel_field,
    register,
    skeleton,
)
from vggtool.data import batches
from vggtool.errors import VggtoolError
from vggtool.models import build_model

DTYPES = ("int8", "float16")
AUTO = "auto"  # StaticQuant's measured engine (see vggtool.compress.engine_choice)
ENGINE_BATCH = 16  # the batch whose faster engine --engine auto keeps, unless --engine-batch says another


def _notes(engine: str, *more: str) -> str:
    """A short label's parenthesis: the engine where it is not fbgemm, then any other notes given."""
    notes = [n for n in (engine if engine != "fbgemm" else "", *more) if n]
    return f" ({', '.join(notes)})" if notes else ""


def engine_field():
    return option("fbgemm", "torch.ao quantized engine: fbgemm or x86, qnnpack on ARM, or (--static) auto: "
                  "the faster here at --engine-batch.")


@dataclass(frozen=True)
class DynamicQuant(Recipe):
    """Post-training dynamic quantization of the Linear layers (weights int8 or float16)."""

    output = Output.QUANTIZED
    stem_fields = ("dtype",)

    dtype: str = option("int8", "Weight type of the Linear layers.", choices=DTYPES)
    engine: str = engine_field()

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise VggtoolError(f"dynamic dtype must be int8 or float16, got {self.dtype!r}")

    @property
    def stem(self) -> str:
        return f"dynamic-{'fp16' if self.dtype == 'float16' else 'int8'}"

    @property
    def label(self):
        return "Post-Training Dynamic", self.dtype

    @property
    def short(self):
        return f"dynamic {'fp16' if self.dtype == 'float16' else 'int8'}" + _notes(self.engine)

    @property
    def tolerance(self):
        # fp16 weights round at 1e-3 relative; int8 activations are quantized per batch on the fly
        return Tolerance(0.02, 0.99) if self.dtype == "float16" else Tolerance(0.1, 0.95)


@dataclass(frozen=True)
class StaticQuant(Recipe):
    """Post-training static int8, calibrated on a seeded subset of the validation split."""

    output = Output.QUANTIZED
    stem_fields = ("fuse", "fuse_relu", "per_channel")
    dtype = "int8"  # not a field: static int8 only (float16 weights are DynamicQuant's)

    fuse: bool = option(False, "Fold each Conv2d+BatchNorm2d before preparing.")
    fuse_relu: bool = option(False, "With --fuse: fold the ReLU too.")
    engine: str = engine_field()
    per_channel: bool = per_channel_field()
    calib_size: int = calib_size_field()
    calib_seed: int = calib_seed_field()
    engine_batch: int = option(ENGINE_BATCH, "With --engine auto: the batch size whose faster engine is kept (both are "
                               "timed at 1 and at it, into meta.json).")

    def __post_init__(self):
        if self.engine_batch < 1:
            raise VggtoolError(f"--engine-batch must be at least 1, got {self.engine_batch}")
        if self.engine_batch != ENGINE_BATCH and self.engine != AUTO:
            raise VggtoolError("--engine-batch needs --engine auto (it says at which batch the engines are compared)")
        if self.calib_size <= 0:
            raise VggtoolError(f"calibration size must be positive, got {self.calib_size}")
        if self.fuse_relu and not self.fuse:
            raise VggtoolError("--fuse-relu needs --fuse")

    @property
    def stem(self) -> str:
        return ("static-int8" + ("-fused" if self.fuse else "") + ("-relu" if self.fuse_relu else "")
                + ("" if self.per_channel else "-per-tensor"))

    @property
    def label(self):
        return "Post-Training Static" + (" Fuse" if self.fuse else ""), self.dtype

    @property
    def short(self):
        return ("static int8" + (" fused" if self.fuse else "")
                + _notes(self.engine, "ReLU fused" if self.fuse_relu else "", "" if self.per_channel else "per-tensor"))

    @property
    def tolerance(self):
        # every activation is rounded to 256 levels, calibrated on another split
        return Tolerance(0.25, 0.9)

    @property
    def scheme(self) -> dict:
        """The quantization scheme, apart from its calibration data."""
        return {"fuse": self.fuse, "fuse_relu": self.fuse_relu, "engine": self.engine, "per_channel": self.per_channel}


@dataclass(frozen=True, kw_only=True)
class QatQuant(FineTuning, Recipe):
    """Quantization-aware training: fuse, insert fake quantization, fine-tune on the
    training split (optionally distilling from the float parent), convert to int8."""

    output = Output.QUANTIZED
    stem_fields = ("distill",)
    dtype = "int8"

    fuse: bool = True  # QAT always fuses: a field without help, so no option
    engine: str = engine_field()
    per_channel: bool = per_channel_field()
    # torch.ao's fused fake-quantize kernel takes float32 only ("expected scalar type Float but found BFloat16"
    # under CPU bf16 autocast on torch 2.0.1), so QAT fine-tunes in float32 whatever the run's precision
    tunes_in_float32 = True
    finetune_epochs: int = 3
    finetune_lr: float = 0.001  # weights start trained: a small rate, as torchvision's QAT reference uses

    def __post_init__(self):
        if self.finetune_epochs < 1:
            raise VggtoolError("quantization-aware training needs --finetune-epochs of at least 1")
        self.check_finetuning()

    @property
    def stem(self) -> str:
        return "qat-int8" + self.tuning_stem

    @property
    def label(self):
        return "Quantization-Aware Training" + (" (KD)" if self.distill else ""), self.dtype

    @property
    def short(self):
        return "QAT int8" + _notes(self.engine, "" if self.per_channel else "per-tensor") + (
            ", distilled" if self.distill else "")

    @property
    def tolerance(self):
        return None  # training moves the weights on purpose; accuracy is what counts

    @property
    def scheme(self) -> dict:
        return {"fuse": self.fuse, "fuse_relu": False, "engine": self.engine, "per_channel": self.per_channel}


def _quantized_figures(model) -> dict:
    return {"quantized_modules": len(quant_ao.quantized_modules(model))}


@apply.register
def _(recipe: DynamicQuant, source, ctx, workdir):
    model = quant_ao.dynamic(source.model, recipe.dtype, recipe.engine)
    return _built(model, source)


@apply.register
def _(recipe: StaticQuant, source, ctx, workdir):
    calib = ctx.calibration_subset(recipe.calib_size, recipe.calib_seed, "static quantization")

    def calibrate(m):
        for x, _ in batches(calib, ctx.batch_size):
            m(x)

    if recipe.engine != AUTO:
        built = _built(quant_ao.static(source.model, calibrate=calibrate, **recipe.scheme), source)
    else:  # fbgemm and x86 share a qconfig: calibrate once, then pack for the engine measured faster
        state = quant_ao.static(source.model, calibrate=calibrate, **{**recipe.scheme, "engine": "fbgemm"}).state_dict()

        def packed_for(engine: str):
            return skeleton(_packed(recipe, engine), source.spec)

        choice, model = engine_choice.choose(state, packed_for, calib, recipe.engine_batch)
        built = _built(model, source)
        built.figures["engine"] = choice
    built.figures.update(calibration_images=len(calib), calibration_split="val")
    return built


@for_loading.register
def _(recipe: StaticQuant, meta: dict):
    if recipe.engine != AUTO:
        return recipe
    chosen = meta.get("figures", {}).get("engine", {}).get("chosen")
    if chosen not in quant_ao.ENGINES:
        raise VggtoolError(f"variant {meta.get('name')} was built with --engine auto but its meta.json "
                           "names no chosen engine: rebuild it")
    return _packed(recipe, chosen)


def _packed(recipe: StaticQuant, engine: str) -> StaticQuant:
    """The recipe as if it had named `engine` (an auto recipe's weights, packed for one engine)."""
    return replace(recipe, engine=engine, engine_batch=ENGINE_BATCH)


def _built(model, source) -> Built:
    return Built(model, source.spec, _quantized_figures(model))


@apply.register
def _(recipe: QatQuant, source, ctx, workdir):
    prepared = quant_ao.prepare_static(source.model, qat=True, **recipe.scheme)
    figures = {"finetune": recipe.finetune(prepared, source, ctx, "quantization-aware training")}
    built = _built(quant_ao.convert(prepared.cpu()), source)
    built.figures.update(figures)
    return built


@skeleton.register
def _(recipe: QatQuant, spec):
    return quant_ao.static(build_model(spec), calibrate=None, **recipe.scheme)  # the same kernels as static int8


@skeleton.register
def _(recipe: DynamicQuant, spec):
    return quant_ao.dynamic(build_model(spec), recipe.dtype, recipe.engine)


@skeleton.register
def _(recipe: StaticQuant, spec):
    return quant_ao.static(build_model(spec), calibrate=None, **recipe.scheme)


offer(StaticQuant, "quantize", "static", "Static int8 of the whole network, calibrated (torch.ao).")
offer(DynamicQuant, "quantize", "dynamic", "Dynamic quantization of the Linear layers (torch.ao).")
offer(QatQuant, "quantize", "qat", "Quantization-aware training, then int8 (torch.ao).")
register(DynamicQuant("float16"), DynamicQuant("int8"), StaticQuant(fuse=False), StaticQuant(fuse=True),
         sets=("report",))
register(QatQuant(), QatQuant(distill=True), sets=("beyond",))
