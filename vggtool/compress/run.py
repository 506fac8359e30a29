"""Compression over a run: its baseline (or another start), its data, its variants folder."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

from torch import nn

from vggtool import train
from vggtool.compress.artifact import META_FILE, build_variant, source_from_checkpoint, source_from_variant
from vggtool.compress.base import Context, Recipe, steps
from vggtool.errors import Unavailable, VggtoolError
from vggtool.files import remove_stale_temporaries
from vggtool.runs import Run

# A fine-tuning display: entered around each fine-tuning, it yields a train.Observer (the CLI's progress bars).
Display = Callable[[], contextlib.AbstractContextManager]


def run_context(run: Run, data_dir: Path, display: Display | None = None, splits: Callable | None = None,
                parity: bool = True) -> Context:
    """A Context over a run's data: splits are read once, only if a recipe asks (`splits`: another source of
    .train, .val and .test). Fine-tuning uses the run's own training settings through `train.finetune`.
    `parity` False: no recipe reads the test split (a search chooses before it may)."""
    splits = splits or cache(lambda: run.splits(data_dir))
    display = display or (lambda: contextlib.nullcontext())

    def finetune(model: nn.Module, epochs: int, lr: float, schedule: str = "onecycle", extra_loss=None,
                 float32: bool = False) -> dict:
        cfg = train.finetune_config(run.config(), epochs, lr, schedule, amp="off" if float32 else None)
        with display() as observer:
            return train.finetune(model, splits().train, cfg, val_split=splits().val, extra_loss=extra_loss,
                                  observer=observer)

    def teacher(ref: str) -> nn.Module:
        """A float variant of the run by name, else a model file."""
        if (run.variants_dir / ref).is_dir():
            return source_from_variant(run.variants_dir / ref).model
        return source_from_checkpoint(Path(ref)).model

    return Context(calibration=lambda: splits().val, finetune=finetune,
                   parity=(lambda: splits().test) if parity else None, teacher=teacher)


def build(run: Run, recipe: Recipe, data_dir: Path, name: str | None = None, checkpoint_path: Path | None = None,
          from_variant: str | None = None, force: bool = False, trust_pickle: bool = False,
          display: Display | None = None) -> dict[str, dict]:
    """Build one recipe from the run's baseline, a checkpoint, or a float variant of the run."""
    if checkpoint_path is not None and from_variant is not None:
        raise VggtoolError("pass either --checkpoint or --from-variant, not both")
    name = name or (f"{from_variant}+{recipe.name}" if from_variant else recipe.name)
    if from_variant is not None:
        source = source_from_variant(run.variants_dir / from_variant)
    else:
        source = source_from_checkpoint(run.baseline_file(checkpoint_path), trust_pickle)
    remove_stale_temporaries(run.variants_dir)
    if (run.variants_dir / name).exists() and not force:
        raise VggtoolError(f"variant {name} already exists in {run.variants_dir}; pass --force to rebuild")
    return {name: build_variant(recipe, source, run_context(run, data_dir, display), run.variants_dir / name, force,
                                name)}


def compress(run: Run, names: list[str], data_dir: Path, checkpoint_path: Path | None = None, force: bool = False,
             trust_pickle: bool = False, on_done: Callable[[str, dict], None] | None = None,
             display: Display | None = None, skip_unavailable: bool = False) -> dict[str, dict]:
    """Build registered variants by name from the run's baseline (or a checkpoint); with `skip_unavailable` (a
    named set) one this installation cannot build is skipped (`on_done` hears of it with {"unavailable": why}).

    A chained name "a+b" builds "a" first (or reuses it when it exists) and then
    "b" from it. Variants already complete are kept (a rerun after a kill builds
    only what is missing; `on_done` hears of them with meta None); `force`
    rebuilds the variants named, not the parents they reuse.
    """
    plans = {name: steps(name) for name in names}  # every name checked before anything is built
    remove_stale_temporaries(run.variants_dir)
    if not force:
        kept = [n for n in names if (run.variants_dir / n / META_FILE).exists()]
        for n in kept:
            if on_done:
                on_done(n, None)
        plans = {n: r for n, r in plans.items() if n not in kept}
    ctx = run_context(run, data_dir, display)
    baseline = cache(lambda: source_from_checkpoint(run.baseline_file(checkpoint_path), trust_pickle))
    metas: dict[str, dict] = {}
    for name, recipes in plans.items():
        try:
            _build_chain(run, name, recipes, baseline, ctx, force, metas, on_done)
        except Unavailable as e:
            if not skip_unavailable:
                raise
            if on_done:
                on_done(name, {"unavailable": str(e)})
    return metas


def _build_chain(run: Run, name: str, recipes: list[Recipe], baseline, ctx: Context, force: bool, metas: dict,
                 on_done) -> None:
    parts = name.split("+")
    for i, recipe in enumerate(recipes):
        step = "+".join(parts[: i + 1])
        last = i == len(recipes) - 1
        if not last and (step in metas or (run.variants_dir / step / META_FILE).exists()):
            continue  # a parent built before, or earlier in this call
        source = baseline() if i == 0 else source_from_variant(run.variants_dir / "+".join(parts[:i]))
        metas[step] = build_variant(recipe, source, ctx, run.variants_dir / step, force=force, name=step)
        if on_done:
            on_done(step, metas[step])
