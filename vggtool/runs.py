"""A run directory and what lives in it: config, checkpoints, variants, results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vggtool import checkpoint
from vggtool.config import TrainConfig
from vggtool.data import Splits, load_splits
from vggtool.errors import VggtoolError
from vggtool.files import read_json
from vggtool.paths import resolve_run_dir
from vggtool.train import BEST, CONFIG

VARIANTS = "variants"


@dataclass(frozen=True)
class Run:
    path: Path

    @classmethod
    def open(cls, run_dir: Path | None) -> Run:
        return cls(resolve_run_dir(run_dir))

    @property
    def baseline(self) -> Path:
        return self.path / BEST

    @property
    def variants_dir(self) -> Path:
        return self.path / VARIANTS

    def config(self) -> TrainConfig:
        if not (self.path / CONFIG).exists():
            return TrainConfig()
        return TrainConfig.from_dict(read_json(self.path / CONFIG, "run config")["config"])

    def splits(self, data_dir: Path) -> Splits:
        cfg = self.config()
        return load_splits(data_dir, val_size=cfg.val_size, seed=cfg.seed, train_subset=cfg.train_subset)

    def variant_names(self) -> list[str]:
        if not self.variants_dir.is_dir():
            return []
        return sorted(p.name for p in self.variants_dir.iterdir() if (p / "meta.json").exists())


def baseline_file(run: Run | None, checkpoint_path: Path | None) -> Path:
    """The checkpoint to start from: an explicit file, else the run's best."""
    if checkpoint_path is not None:
        return Path(checkpoint_path)
    assert run is not None
    if not run.baseline.exists():
        raise VggtoolError(f"{run.path} has no baseline {BEST}: train first or pass --checkpoint")
    return run.baseline


def import_checkpoint(src: Path, run_dir: Path, trust_pickle: bool = False) -> Path:
    """Convert a foreign checkpoint (.pth or raw safetensors) into a run's baseline.

    The architecture is read off the tensor shapes.
    """
    model, spec, _ = checkpoint.load_model(src, None, trust_pickle)
    dest = Path(run_dir) / BEST
    if dest.exists():
        raise VggtoolError(f"{dest} already exists; choose another --run-dir")
    checkpoint.save(dest, model.state_dict(), {"kind": "model", "spec": spec.to_dict(),
                                               "imported_from": str(src), "source_sha256": checkpoint.sha256(src)})
    return dest


@dataclass(frozen=True)
class Target:
    """Something to evaluate: a predict function and how to read its data."""

    name: str
    predict: object
    run: Run | None

    def batches(self, data_dir: Path, split: str, batch_size: int):
        from vggtool.data import Split, batches, load_split

        if split == "test":  # the test split needs no run config
            return batches(Split(*load_split(data_dir, "test")), batch_size)
        splits = self.run.splits(data_dir) if self.run else load_splits(data_dir)
        return batches(splits.get(split), batch_size)


def evaluation_target(run_dir: Path | None, checkpoint_path: Path | None, variant: str | None,
                      trust_pickle: bool = False) -> Target:
    from vggtool.evaluate import torch_predict

    if checkpoint_path is not None and variant is not None:
        raise VggtoolError("pass either --checkpoint or --variant, not both")
    if checkpoint_path is not None:
        run = Run.open(run_dir) if run_dir is not None else None
        model, _, _ = checkpoint.load_model(checkpoint_path, None, trust_pickle)
        return Target(Path(checkpoint_path).name, torch_predict(model), run)
    run = Run.open(run_dir)
    if variant is not None and variant != "baseline":
        from vggtool.compress import load_predict

        return Target(variant, load_predict(run.variants_dir / variant), run)
    model, _, _ = checkpoint.load_model(baseline_file(run, None))
    return Target("baseline", torch_predict(model), run)
