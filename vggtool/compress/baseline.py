"""The trained float32 model itself, as a variant beside its compressed ones."""

from __future__ import annotations

from dataclasses import dataclass

from vggtool.compress.base import Built, Output, Recipe, Tolerance, apply, register


@dataclass(frozen=True)
class Baseline(Recipe):
    """The trained float32 model as it is."""

    output = Output.FLOAT

    @property
    def stem(self) -> str:
        return "baseline"

    @property
    def label(self):
        return "Baseline", "float32"

    @property
    def short(self):
        return "baseline"

    @property
    def tolerance(self):
        return Tolerance(0.0, 1.0)


@apply.register
def _(recipe: Baseline, source, ctx, workdir):
    return Built(source.model, source.spec)


register(Baseline(), sets=("report",))
