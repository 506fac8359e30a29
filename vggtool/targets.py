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
                      trust_pickle: bool = False) -> Target:
    if checkpoint_path is not None and variant is not None:
        raise VggtoolError("pass either --checkpoint or --variant, not both")
    if checkpoint_path is not None:
        run = Run.open(run_dir) if run_dir is not None else None
        model, _, _ = checkpoint.load_model(checkpoint_path, None, trust_pickle)
        return Target(Path(checkpoint_path).name, torch_predict(model), run)
    run = Run.open(run_dir)
    if variant is not None and variant != "baseline":
        folder = run.variants_dir / variant
        if not folder.is_dir():
            raise VggtoolError(f"no variant {variant!r} in {run.variants_dir}: build it with `vggtool compress`")
        return Target(variant, load_variant(folder).predict, run)
    model, _, _ = checkpoint.load_model(run.baseline_file())
    return Target("baseline", torch_predict(model), run)
