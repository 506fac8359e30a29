"""Structured pruning: whole conv filters (with their BatchNorm entries, the next
layer's inputs and the classifier's inputs) and optionally hidden Linear units
are removed, so the model really is smaller and faster; the final Linear's
class outputs are never touched.

Torch-Pruning's dependency graph finds what must go together and ranks it
(what to prune: L1, L2 or BatchNorm scale; how much: a share of parameters or
MACs, uniform per layer or one global ranking). The result is stored as the
per-layer channel plan in its spec plus a safetensors state_dict, rebuilt by
vggtool's own model builder: nothing of Torch-Pruning is needed to load it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from vggtool.compress.base import Built, FineTuning, Output, Recipe, apply, offer, option, register, register_stack
from vggtool.data import batches
from vggtool.errors import VggtoolError
from vggtool.evaluate import evaluate, torch_predict
from vggtool.models import ArchSpec, build_model, infer_spec, macs, param_count

IMPORTANCES = ("l1", "l2", "bn")
TARGETS = ("params", "macs")
ALLOCATIONS = ("uniform", "global")
GRANULARITY = 100  # the channel ratio moves in steps of 1/GRANULARITY until the target is met
SENSITIVITY_AMOUNTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True, kw_only=True)
class StructuredPrune(FineTuning, Recipe):
    """Structured pruning with Torch-Pruning: remove filters until `amount` of the
    parameters (or MACs) is gone, in `steps` rounds of prune-then-fine-tune."""

    output = Output.FLOAT
    stem_fields = ("amount", "distill", "sensitivity_images")  # sensitivity is a figure: it changes no weight

    amount: float = option(0.5, "Fraction of the parameters (or MACs, --target macs) removed.")
    target: str = option("params", "What --amount counts.", choices=TARGETS)
    importance: str = option("l1", "Rank filters by L1 or L2 norm, or by BatchNorm scale.", choices=IMPORTANCES)
    allocation: str = option("uniform", "The same share from every layer, or one ranking across layers.",
                             choices=ALLOCATIONS)
    prune_linear: bool = option(True, "Leave the hidden Linear layers whole.", off="keep-linear")
    steps: int = option(1, "Prune a little, fine-tune, repeat, in this many rounds.")
    slimming_epochs: int = option(0, "First train this many epochs with an L1 penalty on BatchNorm scales "
                                     "(network slimming).")
    slimming_penalty: float = option(1e-4, "That penalty's weight.")
    sensitivity_images: int = option(0, "Also record validation error after pruning 0.1..0.9 without fine-tuning, "
                                        "on this many validation images (0: off).")
    finetune_epochs: int = 5  # a pruned model needs retraining: on by default, unlike L1Prune's

    def __post_init__(self):
        if not 0 < self.amount < 1:
            raise VggtoolError(f"structured pruning amount must be in (0, 1), got {self.amount}")
        for label, value, choices in (("importance", self.importance, IMPORTANCES), ("target", self.target, TARGETS),
                                      ("allocation", self.allocation, ALLOCATIONS)):
            if value not in choices:
                raise VggtoolError(f"unknown {label} {value!r}: choose one of {', '.join(choices)}")
        if self.importance == "bn" and self.prune_linear:
            raise VggtoolError("BatchNorm scale cannot rank the hidden Linear layers (they have no BatchNorm): "
                               "add --keep-linear or choose --importance l1/l2")
        if self.steps < 1 or self.slimming_epochs < 0 or self.slimming_penalty < 0 or self.sensitivity_images < 0:
            raise VggtoolError("steps must be >= 1; slimming epochs, penalty and sensitivity images >= 0")
        self.check_finetuning()

    @property
    def stem(self) -> str:
        return f"structured-{self.amount:g}" + self.tuning_stem

    @property
    def label(self):
        tuned = f", fine-tuned {self.finetune_epochs} ep" + (" with KD" if self.distill else "") \
            if self.finetune_epochs else ""
        return f"Structured pruning ({self.amount:g} of {self.target}, {self.importance}{tuned})", "float32"

    @property
    def short(self):
        of = "" if self.target == "params" else f" of {self.target}"
        how = "" if self.importance == "l1" else f" ({self.importance})"
        return f"structured {self.amount:g}{of}{how}" + self.tuning_note


class _Pruner:
    """Torch-Pruning over one model: removes channels a little at a time until a
    share of the original parameters or MACs is gone."""

    def __init__(self, model: nn.Module, recipe: StructuredPrune):
        import torch_pruning as tp

        importance = {"l1": tp.importance.MagnitudeImportance(p=1), "l2": tp.importance.MagnitudeImportance(p=2),
                      "bn": tp.importance.BNScaleImportance()}[recipe.importance]
        ignored = [model.classifier[6]] + ([] if recipe.prune_linear else [model.classifier[0], model.classifier[3]])
        self.model, self.recipe = model, recipe
        self.pruner = tp.pruner.MetaPruner(
            model, torch.zeros(1, 3, 32, 32), importance=importance, pruning_ratio=1 - 1 / GRANULARITY,
            iterative_steps=GRANULARITY, global_pruning=recipe.allocation == "global", ignored_layers=ignored)
        self.spec = infer_spec(model.state_dict())
        self.start = self.measure(self.spec)
        self.taken = 0

    def measure(self, spec: ArchSpec) -> int:
        return param_count(spec) if self.recipe.target == "params" else macs(spec)

    def removed(self) -> float:
        return 1 - self.measure(infer_spec(self.model.state_dict())) / self.start

    def prune_to(self, goal: float) -> None:
        """Take channel steps until `goal` of the original parameters (or MACs) is removed."""
        while self.removed() < goal:
            if self.taken == GRANULARITY:
                raise VggtoolError(f"pruning {goal:g} of the {self.recipe.target} would remove every channel of a "
                                   f"layer ({self.removed():.3f} is the most this allocation reaches)")
            self.pruner.step()
            self.taken += 1
            if min(infer_spec(self.model.state_dict()).channels) < 1:
                raise VggtoolError(f"pruning {goal:g} of the {self.recipe.target} removes every channel of a layer")


def bn_scale_penalty(model: nn.Module, penalty: float):
    """Network slimming's sparsity term: penalty * sum |gamma| over BatchNorm scales."""
    scales = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return lambda x, logits: penalty * sum(w.abs().sum() for w in scales)


def sensitivity(source, recipe: StructuredPrune, val, images: int, batch_size: int) -> list[dict]:
    """Validation error after pruning each share without fine-tuning: which amount is affordable."""
    subset = val.subset(torch.arange(min(images, len(val))))
    rows = [{"amount": 0.0, "params": param_count(source.spec), "macs": macs(source.spec),
             "val_top1_err": evaluate(torch_predict(source.model), batches(subset, batch_size)).top1_err}]
    for amount in SENSITIVITY_AMOUNTS:
        model = copy.deepcopy(source.model).eval()
        try:
            _Pruner(model, recipe).prune_to(amount)
        except VggtoolError:
            break  # this allocation cannot go further
        spec = infer_spec(model.state_dict())
        rows.append({"amount": amount, "params": param_count(spec), "macs": macs(spec),
                     "val_top1_err": evaluate(torch_predict(model), batches(subset, batch_size)).top1_err})
    return rows


@apply.register
def _(recipe: StructuredPrune, source, ctx, workdir):
    model = copy.deepcopy(source.model).eval()
    figures: dict = {"params_before": param_count(source.spec), "macs_before": macs(source.spec)}
    if recipe.sensitivity_images:
        figures["sensitivity"] = sensitivity(source, recipe, ctx.calibration_split("the sensitivity scan"),
                                             recipe.sensitivity_images, ctx.batch_size)
    if recipe.slimming_epochs:
        tune = ctx.finetuner("--slimming-epochs")
        figures["slimming"] = tune(model, epochs=recipe.slimming_epochs, lr=recipe.finetune_lr,
                                   schedule=recipe.finetune_schedule,
                                   extra_loss=bn_scale_penalty(model, recipe.slimming_penalty))
    pruner = _Pruner(model, recipe)
    for step in range(1, recipe.steps + 1):
        pruner.prune_to(recipe.amount * step / recipe.steps)
        if recipe.finetune_epochs:
            figures.setdefault("finetune", []).append(recipe.finetune(model, source, ctx, "structured pruning"))
    # vggtool's own builder, from the channel plan alone: what loading will do
    spec = replace(infer_spec(model.state_dict()), dropout=source.spec.dropout, width=source.spec.width)
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(model.state_dict())
    figures.update(params_after=param_count(spec), macs_after=macs(spec), removed=pruner.removed())
    return Built(rebuilt.eval(), spec, figures)


offer(StructuredPrune, "prune", "structured", "Remove whole filters and hidden units (Torch-Pruning): smaller "
      "and faster.")
for _amount in (0.5, 0.75, 0.9):
    register(StructuredPrune(amount=_amount, distill=True), sets=("beyond",))
    register_stack(f"structured-{_amount:g}-kd", "static-int8-fused", sets=("beyond",))
