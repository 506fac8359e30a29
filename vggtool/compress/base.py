"""What a compression recipe is: a frozen dataclass that names itself, declares
what it produces, and is registered where it is defined.

A recipe type registers itself when its class is created (`__init_subclass__`,
as timm's `@register_model` does for architectures); its handlers register on
the two dispatchers below (`apply` builds, `skeleton` rebuilds for loading),
as torchao registers one handler per config type. A family module therefore
holds its dataclasses and their handlers and nothing else needs to change.
"""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import singledispatch
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from vggtool.data import Split
from vggtool.errors import VggtoolError
from vggtool.models import ArchSpec, build_model


class Output(str, enum.Enum):
    """What a recipe produces; loading, parent checks and figures follow from it."""

    FLOAT = "float"  # a float torch model: loads into the plain VGG, can be a parent
    QUANTIZED = "quantized"  # a torch model with quantized kernels: loads into the recipe's skeleton
    ONNX = "onnx"  # an ONNX file, run with ONNX Runtime
    OPENVINO = "openvino"  # an OpenVINO IR (model.xml and its weights, model.bin), run with OpenVINO


@dataclass(frozen=True)
class Tolerance:
    """How closely a variant must follow its float parent on a tiny test model:
    max |logit difference| as a fraction of the parent's largest |logit|, and
    the least top-1 agreement. Stated per recipe, checked by the test suite."""

    max_rel_diff: float
    min_agreement: float


RECIPE_TYPES: dict[str, type[Recipe]] = {}
REGISTRY: dict[str, Recipe] = {}  # the variant names users type -> recipes
STACKS: dict[str, tuple[str, ...]] = {}  # named chains "a+b": b built on a, each step its own variant
SETS: dict[str, list[str]] = {}  # what `compress --set NAME` builds; "report" is the report's eight
MODES: dict[tuple[str, str], Mode] = {}  # (command, flag) -> the recipe type `vggtool COMMAND --FLAG` builds


def option(default, help: str, **meta):
    """A recipe field that is also a command-line option: its default and help are said here only
    (`vggtool.options` makes the option). `choices` limits a text field, `off` names the flag that
    turns a True field off (per_channel: --per-tensor), `shorthand` an option that sets every field
    naming it (--bits)."""
    kw = {"kw_only": meta.pop("kw_only")} if "kw_only" in meta else {}
    return field(default=default, metadata={"help": help, **meta}, **kw)


@dataclass(frozen=True)
class Mode:
    """How `vggtool COMMAND --FLAG` builds a recipe type: the flag's help, and the fields it fixes."""

    recipe: type
    help: str
    preset: dict = field(default_factory=dict)


def offer(recipe: type, command: str, flag: str = "", help: str = "", **preset) -> None:
    """Offer a recipe type as a mode of a vggtool command: `offer(StaticQuant, "quantize", "static")`
    is `vggtool quantize --static`, with an option per field; flag "" is a command's only mode.
    The help is the recipe's docstring's first line unless given."""
    MODES[(command, flag)] = Mode(recipe, help or recipe.__doc__.strip().split("\n")[0], preset)


@dataclass(frozen=True)
class Recipe:
    """Base of all recipes. Subclasses are frozen dataclasses that define `stem`
    and `label`; `output` says what they produce."""

    output: ClassVar[Output] = Output.FLOAT
    stem_fields: ClassVar[tuple[str, ...]] = ()  # fields the stem already spells out

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        known = RECIPE_TYPES.get(cls.__name__)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise VggtoolError(f"two recipe types are called {cls.__name__}: {known.__module__} and {cls.__module__}")
        if not isinstance(cls.output, Output):
            raise VggtoolError(f"recipe {cls.__name__} must declare its output as an Output, got {cls.output!r}")
        RECIPE_TYPES[cls.__name__] = cls

    @property
    def stem(self) -> str:
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The stem, then every other parameter that differs from its dataclass default
        (the recipe's own first, shared options such as fine-tuning after)."""
        parts = []
        for f in sorted(fields(self), key=lambda f: f.name in TUNING_FIELDS):
            default = f.default if f.default is not MISSING else (
                f.default_factory() if f.default_factory is not MISSING else MISSING)
            value = getattr(self, f.name)
            if f.name not in self.stem_fields and value != default:
                parts.append(f"-{f.name.replace('_', '')}{_name_part(value)}")
        return self.stem + "".join(parts)

    @property
    def label(self) -> tuple[str, str]:
        """The report's Method and Type columns."""
        raise NotImplementedError

    @property
    def short(self) -> str:
        """A few words for tables and plots, e.g. "static int8 fused (x86)"; notes after a ", " (such as
        "distilled") go to the end of a chain's label (`vggtool.compress.display_label`)."""
        return self.name

    @property
    def tolerance(self) -> Tolerance | None:
        """Expected agreement with the float parent; None where the recipe changes
        the function on purpose (pruning), which its own tests check instead."""
        return None

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "params": asdict(self)}


def _name_part(value) -> str:
    """A parameter value as it appears in a variant (folder) name: no spaces, slashes or brackets."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "_".join(_name_part(v) for v in value)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("_")


def recipe_from_dict(d: dict) -> Recipe:
    """The recipe recorded in a meta.json (JSON lists come back as the tuples they were)."""
    try:
        cls = RECIPE_TYPES[d["type"]]
        params = dict(d["params"])
    except (KeyError, TypeError, ValueError):
        raise VggtoolError(f"unknown recipe {d!r}: no installed recipe type of that name") from None
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise VggtoolError(f"recipe {d['type']} has no parameter(s) {', '.join(unknown)}: written by a newer vggtool?")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    except (TypeError, AttributeError, ValueError) as e:
        raise VggtoolError(f"malformed recipe {d!r}: {e}") from None


def register(*recipes: Recipe, sets: tuple[str, ...] = ()) -> None:
    """Offer these recipes under their names (`compress --variant NAME`, `compress --list`),
    and in the named sets (`compress --set NAME`)."""
    for recipe in recipes:
        known = REGISTRY.get(recipe.name)
        if known is not None and known != recipe:
            raise VggtoolError(f"variant name {recipe.name} is registered twice, for different recipes")
        REGISTRY[recipe.name] = recipe
        _add_to_sets(recipe.name, sets)


def register_stack(*names: str, sets: tuple[str, ...] = ()) -> str:
    """Offer a chain of registered recipes as one variant, e.g. a pruned model then int8:
    built as "a", then "a+b" from it; each step's meta.json records the chain."""
    for name in names:
        lookup(name)
    name = "+".join(names)
    STACKS[name] = names
    _add_to_sets(name, sets)
    return name


def _add_to_sets(name: str, sets: tuple[str, ...]) -> None:
    for s in sets:
        if name not in SETS.setdefault(s, []):
            SETS[s].append(name)


def sets_of(name: str) -> list[str]:
    """The sets a registered variant or chain belongs to."""
    return [s for s, members in SETS.items() if name in members]


def selection(names: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> list[str]:
    """The variants `compress --variant/--set` name, each once in order; the report's eight by default."""
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise VggtoolError(f"unknown set {unknown[0]!r}: choose one of {', '.join(SETS)}")
    return list(dict.fromkeys([*names, *(n for s in sets for n in SETS[s])])) or list(SETS["report"])


def lookup(name: str) -> Recipe:
    if name not in REGISTRY:
        raise VggtoolError(f"unknown variant {name!r}: choose one of {', '.join(REGISTRY)} (`vggtool compress --list`)")
    return REGISTRY[name]


def steps(name: str) -> list[Recipe]:
    """The recipes a variant name stands for: one, or a chain "a+b+c" of registered names."""
    return [lookup(part) for part in name.split("+")]


# ---------------------------------------------------------------- what handlers get and give
@dataclass
class Source:
    """The float model a recipe starts from, and where it came from."""

    model: nn.Module
    spec: ArchSpec
    path: Path
    chain: list = field(default_factory=list)


@dataclass
class Context:
    """Data a recipe may need, produced on demand: calibration images (the
    validation split, never test), fine-tuning on the training split, and a
    parity set. Recipes never see where the data comes from."""

    calibration: Callable[[], Split] | None = None
    finetune: Callable[..., dict] | None = None
    parity: Callable[[], Split] | None = None
    teacher: Callable[[str], nn.Module] | None = None
    batch_size: int = 100

    def calibration_split(self, what: str) -> Split:
        if self.calibration is None:
            raise VggtoolError(f"{what} needs calibration data (the run's validation split)")
        split = self.calibration()
        if len(split) == 0:
            raise VggtoolError(f"the validation split is empty: {what} needs it for calibration")
        return split

    def calibration_subset(self, size: int, seed: int, what: str) -> Split:
        """A seeded subset of at most `size` validation images: what calibrates a quantizer."""
        split = self.calibration_split(what)
        return split.subset(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:size])

    def finetuner(self, what: str) -> Callable[..., dict]:
        if self.finetune is None:
            raise VggtoolError(f"{what} needs the run's training data for fine-tuning")
        return self.finetune


# Fields several quantizers share, each said once here (a dataclass Field cannot be shared).
REDUCE_RANGES = ("auto", "on", "off")


def calib_size_field():
    return option(1000, "Validation images used for calibration (never test images).")


def calib_seed_field():
    return option(0, "Seed choosing the calibration images.")


def per_channel_field():
    return option(True, "One weight scale per tensor instead of one per output channel.", off="per-tensor")


def reduce_range_field():
    return option("auto", "7-bit weights; auto: on where the CPU lacks VNNI, whose u8s8 sums can saturate.",
                  choices=REDUCE_RANGES)


SCHEDULES = ("onecycle", "cosine")


@dataclass(frozen=True, kw_only=True)
class FineTuning:
    """Fine-tuning options shared by the recipes that retrain (a mixin: keyword-only
    fields, so each recipe keeps its own positional ones). `teacher` is a float
    variant of the run or a checkpoint file; empty means the recipe's parent."""

    finetune_epochs: int = option(0, "Retrain this many epochs on the training split (the best on validation is kept).")
    finetune_lr: float = option(0.01, "Peak learning rate of fine-tuning.")
    finetune_schedule: str = option("onecycle", "Learning-rate schedule of fine-tuning.", choices=SCHEDULES)
    distill: bool = option(False, "Fine-tune with knowledge distillation from the parent (or --teacher).")
    temperature: float = option(4.0, "Distillation temperature T.")
    distill_weight: float = option(1.0, "Weight w of the distillation term w * T^2 * KL, added to cross-entropy.")
    teacher: str = option("", "Distillation teacher instead of the parent: a float variant of the run or a model file.")

    def check_finetuning(self) -> None:
        if self.finetune_epochs < 0 or self.finetune_lr <= 0:
            raise VggtoolError("finetune epochs must be >= 0 and finetune lr positive")
        if self.finetune_schedule not in SCHEDULES:
            raise VggtoolError(f"fine-tuning schedule must be one of {', '.join(SCHEDULES)}, got {self.finetune_schedule!r}")
        if self.temperature <= 0 or self.distill_weight < 0:
            raise VggtoolError("distillation temperature must be positive and its weight >= 0")
        if (self.distill or self.teacher) and not self.finetune_epochs:
            raise VggtoolError("distillation happens while fine-tuning: give --finetune-epochs N as well")
        if self.teacher and not self.distill:
            raise VggtoolError("--teacher needs --distill")

    # Fine-tuning runs in the run's training precision (bf16 autocast where the CPU has it); a recipe whose
    # training ops take float32 only says so here.
    tunes_in_float32 = False

    @property
    def tuning_stem(self) -> str:
        return "-kd" if self.distill else ""

    @property
    def tuning_note(self) -> str:
        """What a short label says of the retraining: ", distilled", ", fine-tuned", or nothing."""
        return ", distilled" if self.distill else ", fine-tuned" if self.finetune_epochs else ""

    def finetune(self, model: nn.Module, source: Source, ctx: Context, what: str) -> dict:
        """Fine-tune `model` in place as these options say; returns what happened."""
        from vggtool.train import distillation

        tune = ctx.finetuner(what)
        extra = None
        if self.distill:
            teacher = source.model
            if self.teacher:
                if ctx.teacher is None:
                    raise VggtoolError(f"{what}: no way to load teacher {self.teacher!r} here")
                teacher = ctx.teacher(self.teacher)
            classes = teacher.classifier[-1].out_features
            if classes != source.spec.num_classes:
                raise VggtoolError(f"the teacher predicts {classes} classes, the model {source.spec.num_classes}")
            extra = distillation(copy.deepcopy(teacher), self.temperature, self.distill_weight)
        return tune(model, epochs=self.finetune_epochs, lr=self.finetune_lr, schedule=self.finetune_schedule,
                    extra_loss=extra, float32=self.tunes_in_float32)


TUNING_FIELDS = {f.name for f in fields(FineTuning)}


@dataclass
class Built:
    """A recipe's result: a torch model (float or quantized outputs) or a file
    the handler wrote into the work folder (ONNX), the architecture it has,
    figures known at build time and extra entries for meta.json."""

    model: nn.Module | None
    spec: ArchSpec
    figures: dict = field(default_factory=dict)
    file: Path | None = None  # ONNX output; or a torch model stored in a recipe's own format (see `restore`)
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------- the two dispatchers
@singledispatch
def apply(recipe: Recipe, source: Source, ctx: Context, workdir: Path) -> Built:
    """Build `recipe` from `source`; files it writes go into `workdir`."""
    raise VggtoolError(f"no handler for recipe {type(recipe).__name__}")


@singledispatch
def finalize(recipe: Recipe, model: nn.Module) -> nn.Module:
    """What a loaded model becomes before it runs: itself in eval mode, or e.g. a
    compiled form that cannot be stored and is rebuilt from what was."""
    return model.eval()


@singledispatch
def restore(recipe: Recipe, folder: Path, meta: dict) -> dict:
    """The state_dict a variant folder stores: `model.safetensors`, or a recipe's own
    format (its file named by meta["file"]) decoded back into tensors."""
    from vggtool import checkpoint

    state, _ = checkpoint.read(Path(folder) / meta.get("file", "model.safetensors"))
    return state


@singledispatch
def for_loading(recipe: Recipe, meta: dict) -> Recipe:
    """The recipe whose skeleton a saved variant loads into: itself, unless a choice made at build time
    and recorded in meta.json (as `--engine auto`'s engine) settles it."""
    return recipe


@singledispatch
def skeleton(recipe: Recipe, spec: ArchSpec) -> nn.Module:
    """The module structure a saved state_dict of this recipe loads into:
    the plain VGG for float outputs; quantized recipes register their own."""
    if recipe.output is not Output.FLOAT:
        raise VggtoolError(f"recipe {type(recipe).__name__} produces {recipe.output.value} output but has no skeleton")
    return build_model(spec)
