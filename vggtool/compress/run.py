"""Compression over a run: its baseline (or another start), its data, its variants folder."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from torch import nn

from vggtool.compress.artifact import build_variant, source_from_checkpoint, source_from_variant
from vggtool.compress.base import Context, Recipe
from vggtool.errors import VggtoolError
from vggtool.runs import Run


def run_context(run: Run, data_dir: Path) -> Context:
    """A Context over a run's data: splits are read once, only if a recipe asks.
    Fine-tuning uses the run's own training settings through `train.finetune`."""
    splits = cache(lambda: run.splits(data_dir))

    def finetune(model: nn.Module, epochs: int, lr: float, extra_loss=None) -> dict:
        from vggtool.train import finetune as tune
        from vggtool.train import finetune_config

        return tune(model, splits().train, finetune_config(run.config(), epochs, lr), val_split=splits().val,
                    extra_loss=extra_loss)

    return Context(calibration=lambda: splits().val, finetune=finetune, parity=lambda: splits().test)


def compress(run: Run, recipes: dict[str, Recipe], data_dir: Path, checkpoint_path: Path | None = None,
             from_variant: str | None = None, force: bool = False, trust_pickle: bool = False,
             on_done: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Build each named recipe from the run's baseline (or a checkpoint, or a float variant)."""
    if checkpoint_path is not None and from_variant is not None:
        raise VggtoolError("pass either --checkpoint or --from-variant, not both")
    if from_variant is not None:
        source = source_from_variant(run.variants_dir / from_variant)
    else:
        source = source_from_checkpoint(run.baseline_file(checkpoint_path), trust_pickle)
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
