"""What `vggtool evaluate` measures: a run's baseline, one of its variants, or any checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vggtool import checkpoint
from vggtool.compress import load_variant
from vggtool.data import Split, batches, load_split, load_splits
from vggtool.errors import VggtoolError
from vggtool.evaluate import Predict, torch_predict
from vggtool.runs import Run
from vggtool.runtimes import key, resolve


@dataclass(frozen=True)
class Target:
    """Something to evaluate: a predict function and how to read its data."""

    name: str
    predict: Predict
    run: Run | None

    def batches(self, data_dir: Path, split: str, batch_size: int):
        if split == "test":  # the test split needs no run config
            return batches(Split(*load_split(data_dir, "test")), batch_size)
        splits = self.run.splits(data_dir) if self.run else load_splits(data_dir)
        return batches(splits.get(split), batch_size)


def evaluation_target(run_dir: Path | None, checkpoint_path: Path | None, variant: str | None,
                      trust_pickle: bool = False, runtime: str | None = None) -> Target:
    """What to evaluate, in `runtime` (None: its own; vggtool.runtimes): a model file and the baseline are torch
    models, so only a variant can run elsewhere."""
    if checkpoint_path is not None and variant is not None:
        raise VggtoolError("pass either --checkpoint or --variant, not both")
    if runtime is not None and (variant is None or variant == "baseline"):
        resolve("float", runtime, Path(checkpoint_path).name if checkpoint_path else "baseline")
    if checkpoint_path is not None:
        run = Run.open(run_dir) if run_dir is not None else None
        model, _, _ = checkpoint.load_model(checkpoint_path, None, trust_pickle)
        return Target(Path(checkpoint_path).name, torch_predict(model), run)
    run = Run.open(run_dir)
    if variant is not None and variant != "baseline":
        folder = run.variants_dir / variant
        if not folder.is_dir():
            raise VggtoolError(f"no variant {variant!r} in {run.variants_dir}: build it with `vggtool compress`")
        loaded = load_variant(folder, runtime=runtime)
        return Target(key(variant, loaded.runtime, loaded.recipe.output.value), loaded.predict, run)
    model, _, _ = checkpoint.load_model(run.baseline_file())
    return Target("baseline", torch_predict(model), run)
