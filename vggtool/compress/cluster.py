"""Deep Compression's weight sharing (Han et al., ICLR 2016): each Conv2d and Linear
weight is replaced by its nearest entry of a per-layer k-means codebook of at most
2^bits values, zeros of a pruned parent kept at zero and left out of the clustering;
optionally the centroids are fine-tuned (each cluster's gradients summed into its
centroid). The model is stored in the coded container of `vggtool.codec`
(codebooks, indices and relative positions, xz-coded): the file on disk is the
size. Loading decodes it into a dense float model, so it evaluates, benchmarks,
quantizes and exports like any float variant.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from vggtool import codec
from vggtool.compress.base import (
    Built,
    FineTuning,
    Output,
    Recipe,
    apply,
    offer,
    option,
    register,
    register_stack,
    restore,
)
from vggtool.compress.pruning import L1Prune
from vggtool.errors import VggtoolError

CODED_FILE = "model.vdc"
KMEANS_ITERATIONS = 50


@dataclass(frozen=True)
class WeightSharing(FineTuning, Recipe):
    """Per-layer k-means weight sharing (conv and linear index widths apart), coded storage."""

    output = Output.FLOAT
    stem_fields = ("conv_bits", "linear_bits", "distill")

    conv_bits: int = option(8, "Conv2d codebooks: at most 2^B shared values per layer (1-8).", shorthand="bits")
    linear_bits: int = option(5, "Linear codebooks: at most 2^B shared values per layer (1-8).", shorthand="bits")
    # a centroid's gradient is the sum over its cluster's members: a smaller step than for single weights
    finetune_lr: float = field(default=0.001, kw_only=True)

    def __post_init__(self):
        for label, b in (("conv", self.conv_bits), ("linear", self.linear_bits)):
            if not 1 <= b <= codec.MAX_BITS:
                raise VggtoolError(f"{label} bits must be in 1..{codec.MAX_BITS}, got {b}")
        self.check_finetuning()

    @property
    def stem(self) -> str:
        return f"cluster-c{self.conv_bits}l{self.linear_bits}" + self.tuning_stem

    @property
    def label(self):
        tuned = f", centroids fine-tuned {self.finetune_epochs} ep" if self.finetune_epochs else ""
        return f"Weight sharing (conv {self.conv_bits} / linear {self.linear_bits} bits, xz-coded{tuned})", "float32"

    @property
    def short(self):
        return f"weight sharing c{self.conv_bits}/l{self.linear_bits}" + self.tuning_note

    def bits(self, module: nn.Module) -> int:
        return self.conv_bits if isinstance(module, nn.Conv2d) else self.linear_bits


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = KMEANS_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars, centroids initialised linearly over [min, max]
    (the paper's best). Returns (sorted float32 centroids, each value's centroid index)."""
    v = values.double()
    lo, hi = float(v.min()), float(v.max())
    k = max(1, min(k, v.numel()))
    c = torch.linspace(lo, hi, k, dtype=torch.float64) if hi > lo else torch.tensor([lo], dtype=torch.float64)
    for _ in range(iterations):
        a = torch.bucketize(v, (c[1:] + c[:-1]) / 2)  # 1-D: nearest centroid by midpoints
        counts = torch.bincount(a, minlength=len(c))
        sums = torch.zeros_like(c).index_add_(0, a, v)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), c)  # an empty cluster keeps its place
        if torch.equal(new, c):
            break
        c = new
    c = c.float()
    return c, torch.bucketize(values.float(), (c[1:] + c[:-1]) / 2)


class SharedWeight(nn.Module):
    """A parametrization: the weight is centroids[index] where the mask is set, 0 elsewhere.
    Gradients reaching the weight are summed per cluster into its centroid."""

    def __init__(self, centroids: torch.Tensor, index: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.centroids = nn.Parameter(centroids.clone())
        self.register_buffer("index", index)
        self.register_buffer("mask", mask)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, self.centroids[self.index], torch.zeros((), dtype=original.dtype,
                                                                              device=original.device))


def share_weights(model: nn.Module, recipe: WeightSharing) -> tuple[nn.Module, dict[str, int]]:
    """A copy of `model` whose Conv2d/Linear weights are parametrized by per-layer codebooks.
    Returns it and {state_dict weight name: index bits}."""
    m = copy.deepcopy(model).cpu()
    bits = {}
    for name, mod in m.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        w = mod.weight.detach()
        mask = w != 0
        b = recipe.bits(mod)
        centroids, assign = kmeans_1d(w[mask], 2**b) if mask.any() else (torch.zeros(1), None)
        index = torch.zeros(w.shape, dtype=torch.long)
        if assign is not None:
            index[mask] = assign
        parametrize.register_parametrization(mod, "weight", SharedWeight(centroids, index, mask), unsafe=True)
        bits[f"{name}.weight" if name else "weight"] = b
    return m, bits


def bake(model: nn.Module) -> nn.Module:
    """Make the shared weights plain tensors again (values centroids[index], zeros kept)."""
    for mod in model.modules():
        if parametrize.is_parametrized(mod, "weight"):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
    return model.eval()


@apply.register
def _(recipe: WeightSharing, source, ctx, workdir: Path):
    model, bits = share_weights(source.model, recipe)
    figures: dict = {"codebook_entries": {}}
    if recipe.finetune_epochs:
        figures["finetune"] = recipe.finetune(model, source, ctx, "centroid fine-tuning (--finetune-epochs)")
    model = bake(model)
    state = model.state_dict()
    for name in bits:
        figures["codebook_entries"][name] = len(codec.shared_values(state[name]))
    path = workdir / CODED_FILE
    figures.update(codec.save(path, state, bits, {"spec": source.spec.to_dict()}))
    decoded, _ = codec.load(path)  # what every later load sees: evaluate exactly that
    for k, v in state.items():
        if not torch.equal(decoded[k], v):
            raise VggtoolError(f"the coded model does not decode to the shared weights ({k}): not stored")
    model.load_state_dict(decoded)
    figures["weights_sha256"] = codec.state_sha256(model.state_dict())
    return Built(model, source.spec, figures, file=path, meta={"file": CODED_FILE})


@restore.register
def _(recipe: WeightSharing, folder: Path, meta: dict) -> dict:
    state, _ = codec.load(Path(folder) / meta.get("file", CODED_FILE))
    return state


# The paper's pipeline on the classifier-heavy VGG: prune (conv and linear apart), fine-tune with
# the mask fixed, share weights (conv 8 / linear 5 bits, as the paper) and code.
_PRUNED = L1Prune("global", 0.9, linear_amount=0.97, finetune_epochs=5)
offer(WeightSharing, "cluster")
register(WeightSharing(), WeightSharing(8, 5, finetune_epochs=3), WeightSharing(6, 4, finetune_epochs=3),
         _PRUNED, sets=("deep-compression",))
register_stack(_PRUNED.name, WeightSharing().name, sets=("deep-compression",))
