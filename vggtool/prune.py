"""L1 unstructured magnitude pruning (torch.nn.utils.prune), as the report did.

What to prune (the L1 ranking, global or per layer) is chosen here; the
masks are then made permanent. The zeros stay stored densely: such a model
is no smaller on disk unless compressed, which the artifact records.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune as tprune


def _layers(model: nn.Module, kind: type) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kind)]


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
    convs = _layers(m, nn.Conv2d)
    if scope == "global":
        tprune.global_unstructured([(c, "weight") for _, c in convs], pruning_method=tprune.L1Unstructured,
                                   amount=amount)
        if linear_amount:
            tprune.global_unstructured([(li, "weight") for _, li in _layers(m, nn.Linear)],
                                       pruning_method=tprune.L1Unstructured, amount=linear_amount)
    else:
        for _, c in convs:
            tprune.l1_unstructured(c, "weight", amount)
        for _, li in _layers(m, nn.Linear):
            tprune.l1_unstructured(li, "weight", linear_amount)
    if finetune is not None:
        finetune(m)
    for _, mod in _layers(m, nn.Conv2d) + _layers(m, nn.Linear):
        if tprune.is_pruned(mod) and hasattr(mod, "weight_orig"):
            tprune.remove(mod, "weight")
    return m.eval()


def sparsity(model: nn.Module, kinds: tuple[type, ...]) -> float:
    """Fraction of zero weights over all layers of the given kinds."""
    zeros = total = 0
    for _, mod in model.named_modules():
        if isinstance(mod, kinds):
            w = mod.weight
            w = w() if callable(w) else w
            if w.is_quantized:
                w = w.dequantize()
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total if total else 0.0


def nonzero_params(state: dict) -> tuple[int, int]:
    """(parameters, non-zero parameters) over the float tensors of a state_dict."""
    n = nz = 0
    for v in state.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            n += v.numel()
            nz += int(torch.count_nonzero(v))
    return n, nz
