"""L1 unstructured magnitude pruning (torch.nn.utils.prune), as the report did.

What to prune (the L1 ranking, global or per layer) is chosen here; the
masks are then made permanent. The zeros stay stored densely: such a model
is no smaller on disk unless compressed, which the artifact records.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import prune as tprune

from vggtool.compress.base import Built, FineTuning, Output, Recipe, apply, offer, option, register
from vggtool.errors import VggtoolError


@dataclass(frozen=True)
class L1Prune(FineTuning, Recipe):
    """L1 unstructured pruning, made permanent; optional fine-tuning (with distillation) with the mask fixed."""

    output = Output.FLOAT
    stem_fields = ("scope", "amount", "distill")

    scope: str = "global"  # set by the mode flag: --global or --local
    amount: float = option(0.6, "Fraction of Conv2d weights set to zero.")
    linear_amount: float = option(0.0, "Fraction of Linear weights set to zero.")

    def __post_init__(self):
        if self.scope not in ("global", "local"):
            raise VggtoolError(f"prune scope must be global or local, got {self.scope!r}")
        for label, a in (("amount", self.amount), ("linear amount", self.linear_amount)):
            if not 0 <= a < 1:
                raise VggtoolError(f"pruning {label} must be in [0, 1), got {a}")
        self.check_finetuning()

    @property
    def stem(self) -> str:
        return f"prune-{self.scope}-{self.amount:g}" + self.tuning_stem

    @property
    def label(self):
        tuned = f", fine-tuned {self.finetune_epochs} ep" if self.finetune_epochs else ""
        return f"Pytorch {self.scope.capitalize()} pruning ({self.amount:g}{tuned})", "float32"

    @property
    def short(self):
        return f"{self.scope} L1 {self.amount:g}" + self.tuning_note


@apply.register
def _(recipe: L1Prune, source, ctx, workdir):
    figures: dict = {}
    finetune = None
    if recipe.finetune_epochs:

        def finetune(m):
            figures["finetune"] = recipe.finetune(m, source, ctx, "pruning with --finetune-epochs")

    model = l1_unstructured(source.model, recipe.scope, recipe.amount, recipe.linear_amount, finetune)
    return Built(model, source.spec, figures)


def _layers(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def l1_unstructured(
    model: nn.Module,
    scope: str,
    amount: float,
    linear_amount: float = 0.0,
    finetune: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Prune a copy of `model`. Global: one L1 ranking over all Conv2d weights.
    Local: each Conv2d at `amount`, each Linear at `linear_amount`.

    `finetune`, if given, trains the model while the masks are still attached,
    so pruned weights stay zero; then the masks are made permanent.
    """
    m = copy.deepcopy(model)
    convs, linears = _layers(m, nn.Conv2d), _layers(m, nn.Linear)
    if scope == "global":
        tprune.global_unstructured([(c, "weight") for c in convs], pruning_method=tprune.L1Unstructured, amount=amount)
        if linear_amount:
            tprune.global_unstructured([(li, "weight") for li in linears], pruning_method=tprune.L1Unstructured,
                                       amount=linear_amount)
    else:
        for c in convs:
            tprune.l1_unstructured(c, "weight", amount)
        for li in linears:
            tprune.l1_unstructured(li, "weight", linear_amount)
    if finetune is not None:
        finetune(m)
    for mod in convs + linears:
        if tprune.is_pruned(mod) and hasattr(mod, "weight_orig"):
            tprune.remove(mod, "weight")
    return m.eval()


offer(L1Prune, "prune", "global", "L1 unstructured: one ranking over all Conv2d weights.", scope="global")
offer(L1Prune, "prune", "local", "L1 unstructured: each Conv2d pruned at --amount on its own.", scope="local")
register(L1Prune("global", 0.6), L1Prune("local", 0.6), sets=("report",))
