"""Compression recipes: typed, registered by name, applied by one function,
saved as reloadable artifacts that record their parent chain.

A variant folder holds `model.safetensors` (or `model.onnx`) and `meta.json`
(recipe, parent chain with sha256, library versions, engine, figures known at
build time). `load_variant` turns any variant back into a predict function.
"""

from __future__ import annotations

import io
import platform
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from functools import singledispatch
from pathlib import Path

import torch
from torch import nn

from vggtool import checkpoint, export, prune, quant_ao
from vggtool.data import Split, batches
from vggtool.errors import VggtoolError
from vggtool.evaluate import Predict, compare, torch_predict
from vggtool.files import atomic_dir, read_json, write_json
from vggtool.models import ArchSpec, build_model

MODEL_FILE, ONNX_FILE, META_FILE = "model.safetensors", "model.onnx", "meta.json"


# ---------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    """Base of all recipes. `name` is what users type and reports show."""

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def label(self) -> tuple[str, str]:
        """The report's Method and Type columns."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "params": asdict(self)}


@dataclass(frozen=True)
class Baseline(Recipe):
    """The trained float32 model as it is."""

    @property
    def name(self) -> str:
        return "baseline"

    @property
    def label(self):
        return "Baseline", "float32"


@dataclass(frozen=True)
class DynamicQuant(Recipe):
    """Post-training dynamic quantization of the Linear layers (weights int8 or float16)."""

    dtype: str = "int8"
    engine: str = "fbgemm"

    def __post_init__(self):
        if self.dtype not in ("int8", "float16"):
            raise VggtoolError(f"dynamic dtype must be int8 or float16, got {self.dtype!r}")

    @property
    def label(self):
        return "Post-Training Dynamic", self.dtype

    @property
    def name(self) -> str:
        return f"dynamic-{'fp16' if self.dtype == 'float16' else 'int8'}" + _suffix(self, engine="fbgemm")


@dataclass(frozen=True)
class StaticQuant(Recipe):
    """Post-training static int8, calibrated on a seeded subset of the validation split."""

    fuse: bool = False
    fuse_relu: bool = False
    engine: str = "fbgemm"
    per_channel: bool = True
    calib_size: int = 1000
    calib_seed: int = 0

    def __post_init__(self):
        if self.calib_size <= 0:
            raise VggtoolError(f"calibration size must be positive, got {self.calib_size}")
        if self.fuse_relu and not self.fuse:
            raise VggtoolError("--fuse-relu needs --fuse")

    @property
    def label(self):
        return "Post-Training Static" + (" Fuse" if self.fuse else ""), "int8"

    @property
    def name(self) -> str:
        base = "static-int8" + ("-fused" if self.fuse else "") + ("-relu" if self.fuse_relu else "")
        extra = "" if self.per_channel else "-per-tensor"
        return base + extra + _suffix(self, engine="fbgemm", calib_size=1000, calib_seed=0)


@dataclass(frozen=True)
class L1Prune(Recipe):
    """L1 unstructured pruning, made permanent; optional fine-tuning with the mask fixed."""

    scope: str = "global"
    amount: float = 0.6
    linear_amount: float = 0.0
    finetune_epochs: int = 0
    finetune_lr: float = 0.01

    def __post_init__(self):
        if self.scope not in ("global", "local"):
            raise VggtoolError(f"prune scope must be global or local, got {self.scope!r}")
        for label, a in (("amount", self.amount), ("linear amount", self.linear_amount)):
            if not 0 <= a < 1:
                raise VggtoolError(f"pruning {label} must be in [0, 1), got {a}")
        if self.finetune_epochs < 0 or self.finetune_lr <= 0:
            raise VggtoolError("finetune epochs must be >= 0 and finetune lr positive")

    @property
    def label(self):
        tuned = f", fine-tuned {self.finetune_epochs} ep" if self.finetune_epochs else ""
        return f"Pytorch {self.scope.capitalize()} pruning ({self.amount:g}{tuned})", "float32"

    @property
    def name(self) -> str:
        return f"prune-{self.scope}-{self.amount:g}" + _suffix(self, linear_amount=0.0, finetune_epochs=0,
                                                               finetune_lr=0.01)


@dataclass(frozen=True)
class OnnxExport(Recipe):
    """ONNX export (opset 15 as the report), run with ONNX Runtime."""

    opset: int = 15

    def __post_init__(self):
        if not 7 <= self.opset <= 21:
            raise VggtoolError(f"opset must be between 7 and 21, got {self.opset}")

    @property
    def label(self):
        return "ONNX", "ONNX"

    @property
    def name(self) -> str:
        return "onnx-fp32" + _suffix(self, opset=15)


def _suffix(recipe: Recipe, **defaults) -> str:
    """Name parts for parameters that differ from the registered defaults."""
    parts = []
    for key, default in defaults.items():
        value = getattr(recipe, key)
        if value != default:
            parts.append(f"{key.replace('_', '')}{value:g}" if isinstance(value, float) else f"{key.replace('_', '')}{value}")
    return "".join("-" + p for p in parts)


RECIPE_TYPES = {cls.__name__: cls for cls in (Baseline, DynamicQuant, StaticQuant, L1Prune, OnnxExport)}

# The report's eight variants, under the names users type and reports show.
REGISTRY: dict[str, Recipe] = {
    r.name: r
    for r in (
        Baseline(),
        DynamicQuant("float16"),
        DynamicQuant("int8"),
        StaticQuant(fuse=False),
        StaticQuant(fuse=True),
        L1Prune("global", 0.6),
        L1Prune("local", 0.6),
        OnnxExport(),
    )
}


def recipe_from_dict(d: dict) -> Recipe:
    try:
        cls = RECIPE_TYPES[d["type"]]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d["params"].items() if k in known})
    except (KeyError, TypeError) as e:
        raise VggtoolError(f"unknown or malformed recipe {d!r}: {e}") from None


def lookup(name: str) -> Recipe:
    if name not in REGISTRY:
        raise VggtoolError(f"unknown variant {name!r}: choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


# ---------------------------------------------------------------- sources and context
@dataclass
class Source:
    """The float model a recipe starts from, and where it came from."""

    model: nn.Module
    spec: ArchSpec
    path: Path
    chain: list = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, path: Path, trust_pickle: bool = False) -> Source:
        model, spec, _ = checkpoint.load_model(path, None, trust_pickle)
        return cls(model, spec, Path(path), [{"name": "checkpoint", "path": str(path),
                                               "sha256": checkpoint.sha256(path)}])

    @classmethod
    def from_variant(cls, folder: Path) -> Source:
        variant = load_variant(folder)
        if not isinstance(recipe_from_dict(variant.meta["recipe"]), (Baseline, L1Prune)):
            raise VggtoolError(f"variant {Path(folder).name} is not a float model; only float variants can be a parent")
        path = Path(folder) / MODEL_FILE
        return cls(variant.model, ArchSpec(**variant.meta["spec"]), path,
                   variant.meta["chain"] + [{"name": variant.name, "path": str(path), "sha256": checkpoint.sha256(path)}])


@dataclass
class Context:
    """Data a recipe may need, produced on demand: calibration images (validation
    split only, never test) and training for fine-tuning."""

    calibration: Callable[[], Split] | None = None
    finetune: Callable[[nn.Module, int, float], None] | None = None
    parity: Callable[[], Split] | None = None
    batch_size: int = 100


@dataclass
class Built:
    model: nn.Module | None
    figures: dict
    onnx_path: Path | None = None


# ---------------------------------------------------------------- apply
@singledispatch
def apply(recipe: Recipe, source: Source, ctx: Context, workdir: Path) -> Built:
    raise VggtoolError(f"no handler for recipe {type(recipe).__name__}")


@apply.register
def _(recipe: Baseline, source, ctx, workdir):
    return Built(source.model, {})


@apply.register
def _(recipe: DynamicQuant, source, ctx, workdir):
    return Built(quant_ao.dynamic(source.model, recipe.dtype, recipe.engine), {})


@apply.register
def _(recipe: StaticQuant, source, ctx, workdir):
    if ctx.calibration is None:
        raise VggtoolError("static quantization needs calibration data (the run's validation split)")
    calib = ctx.calibration()
    n = min(recipe.calib_size, len(calib))
    if n == 0:
        raise VggtoolError("the validation split is empty: static quantization needs it for calibration")
    index = torch.randperm(len(calib), generator=torch.Generator().manual_seed(recipe.calib_seed))[:n]

    def calibrate(m: nn.Module) -> None:
        for x, _ in batches(calib.subset(index), ctx.batch_size):
            m(x)

    model = quant_ao.static(source.model, fuse=recipe.fuse, fuse_relu=recipe.fuse_relu, engine=recipe.engine,
                            per_channel=recipe.per_channel, calibrate=calibrate)
    return Built(model, {"calibration_images": n, "calibration_split": "val"})


@apply.register
def _(recipe: L1Prune, source, ctx, workdir):
    finetune = None
    if recipe.finetune_epochs:
        if ctx.finetune is None:
            raise VggtoolError("fine-tuning needs the run's training data")

        def finetune(m):
            ctx.finetune(m, recipe.finetune_epochs, recipe.finetune_lr)

    model = prune.l1_unstructured(source.model, recipe.scope, recipe.amount, recipe.linear_amount, finetune)
    return Built(model, {})


@apply.register
def _(recipe: OnnxExport, source, ctx, workdir):
    path = workdir / ONNX_FILE
    export.to_onnx(source.model, path, recipe.opset)
    figures = {}
    if ctx.parity is not None:
        session = export.ort_session(path)
        figures["parity"] = compare(torch_predict(source.model), export.ort_predict(session),
                                    batches(ctx.parity(), ctx.batch_size))
    return Built(None, figures, path)


# ---------------------------------------------------------------- figures and artifacts
def state_dict_mb(model: nn.Module) -> float:
    """The report's size: bytes of torch.save(state_dict), measured in memory, / 1e6."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / 1e6


def file_figures(path: Path) -> dict:
    data = Path(path).read_bytes()
    return {"file_bytes": len(data), "compressed_bytes": len(zlib.compress(data, 6)), "compressor": "zlib-6"}


def model_figures(model: nn.Module) -> dict:
    n, nz = prune.nonzero_params(model.state_dict())
    return {
        "size_mb": state_dict_mb(model),
        "float_params": n,
        "nonzero_float_params": nz,
        "sparsity_conv": prune.sparsity(model, (nn.Conv2d,)),
        "sparsity_conv_linear": prune.sparsity(model, (nn.Conv2d, nn.Linear)),
        "quantized_modules": len(quant_ao.quantized_modules(model)),
    }


def versions() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__, "python": platform.python_version()}


def build_variant(recipe: Recipe, source: Source, ctx: Context, dest: Path, force: bool = False,
                  name: str | None = None) -> dict:
    """Apply `recipe` to `source` and write the variant folder atomically; returns its meta."""
    with atomic_dir(dest, force=force) as tmp:
        built = apply(recipe, source, ctx, tmp)
        figures = dict(built.figures)
        if built.onnx_path is not None:
            figures["size_mb"] = built.onnx_path.stat().st_size / 1e6
            figures.update(file_figures(built.onnx_path))
            figures.update({k: v for k, v in model_figures(source.model).items() if k != "size_mb"})
        else:
            figures.update(model_figures(built.model))
            checkpoint.save(tmp / MODEL_FILE, built.model.state_dict(), {"kind": "variant", "recipe": recipe.to_dict()})
            figures.update(file_figures(tmp / MODEL_FILE))
        meta = {
            "name": name or dest.name,
            "recipe": recipe.to_dict(),
            "spec": source.spec.to_dict(),
            "chain": source.chain,
            "versions": versions(),
            "quantized_engine": torch.backends.quantized.engine,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "figures": figures,
        }
        write_json(tmp / META_FILE, meta)
    return meta


# ---------------------------------------------------------------- loading
@singledispatch
def skeleton(recipe: Recipe, spec: ArchSpec) -> nn.Module:
    """The module structure into which a saved state_dict of this recipe loads."""
    return build_model(spec)


@skeleton.register
def _(recipe: DynamicQuant, spec):
    return quant_ao.dynamic(build_model(spec), recipe.dtype, recipe.engine)


@skeleton.register
def _(recipe: StaticQuant, spec):
    return quant_ao.static(build_model(spec), fuse=recipe.fuse, fuse_relu=recipe.fuse_relu, engine=recipe.engine,
                           per_channel=recipe.per_channel, calibrate=None)


@dataclass
class Variant:
    name: str
    meta: dict
    predict: Predict
    model: nn.Module | None = None


def load_variant(folder: Path, threads: int = 0) -> Variant:
    """Rebuild any variant folder as a predict function (fresh process safe; nothing pickled)."""
    folder = Path(folder)
    if not (folder / META_FILE).exists():
        raise VggtoolError(f"no variant at {folder} (missing {META_FILE}); build it with `vggtool compress`")
    meta = read_json(folder / META_FILE, "variant metadata")
    try:
        recipe = recipe_from_dict(meta["recipe"])
        spec = ArchSpec(**meta["spec"])
    except (KeyError, TypeError) as e:
        raise VggtoolError(f"{folder / META_FILE} is malformed: {e}") from None
    if isinstance(recipe, OnnxExport):
        if not (folder / ONNX_FILE).exists():
            raise VggtoolError(f"variant {folder.name} lacks {ONNX_FILE}")
        return Variant(meta["name"], meta, export.ort_predict(export.ort_session(folder / ONNX_FILE, threads)))
    state, _ = checkpoint.read(folder / MODEL_FILE)
    model = skeleton(recipe, spec)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise VggtoolError(f"{folder / MODEL_FILE} does not fit recipe {recipe.name}: {str(e).splitlines()[0]}") from None
    if isinstance(recipe, (DynamicQuant, StaticQuant)):
        quant_ao.use_engine(recipe.engine)
    return Variant(meta["name"], meta, torch_predict(model.eval()), model.eval())


def load_predict(folder: Path) -> Predict:
    return load_variant(folder).predict


# ---------------------------------------------------------------- run level
def run_context(run, data_dir: Path) -> Context:
    """A Context over a run's data: splits are read once, only if a recipe asks."""
    from functools import cache

    from vggtool.train import pick_device, train_one_epoch

    splits = cache(lambda: run.splits(data_dir))

    def finetune(model: nn.Module, epochs: int, lr: float) -> None:
        cfg = replace(run.config(), epochs=epochs, lr=lr, schedule="onecycle", channels_last=False)
        device = pick_device(cfg.device)
        model.to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        train_split = splits().train
        for epoch in range(epochs):
            train_one_epoch(model, optimizer, train_split, cfg, epoch)
        model.cpu().eval()

    return Context(calibration=lambda: splits().val, finetune=finetune, parity=lambda: splits().test)


def compress(run, recipes: dict[str, Recipe], data_dir: Path, checkpoint_path: Path | None = None,
             from_variant: str | None = None, force: bool = False, trust_pickle: bool = False,
             on_done: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Build each named recipe from the run's baseline (or a checkpoint, or a float variant)."""
    from vggtool.runs import baseline_file

    if from_variant is not None:
        source = Source.from_variant(run.variants_dir / from_variant)
    else:
        source = Source.from_checkpoint(baseline_file(run, checkpoint_path), trust_pickle)
    existing = [n for n in recipes if (run.variants_dir / n).exists()]
    if existing and not force:
        raise VggtoolError(f"variant(s) {', '.join(existing)} already exist in {run.variants_dir}; pass --force to rebuild")
    ctx = run_context(run, data_dir)
    metas = {}
    for name, recipe in recipes.items():
        metas[name] = build_variant(recipe, source, ctx, run.variants_dir / name, force=force, name=name)
        if on_done:
            on_done(name, metas[name])
    return metas
