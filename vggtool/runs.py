"""A run directory and what lives in it: config, checkpoints, variants, results.

The file names of a run are defined here and nowhere else; training writes
them, every later phase reads them through `Run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vggtool import checkpoint
from vggtool.config import TrainConfig
from vggtool.data import Splits, load_splits
from vggtool.errors import VggtoolError
from vggtool.files import read_json
from vggtool.paths import resolve_run_dir

LAST, BEST, CONFIG, METRICS = "last.safetensors", "best.safetensors", "config.json", "metrics.jsonl"
VARIANTS, RESULTS = "variants", "results"


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
    def last(self) -> Path:
        return self.path / LAST

    @property
    def variants_dir(self) -> Path:
        return self.path / VARIANTS

    @property
    def results_dir(self) -> Path:
        return self.path / RESULTS

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

    def baseline_file(self, checkpoint_path: Path | None = None) -> Path:
        """The checkpoint to start from: an explicit file, else the run's best."""
        if checkpoint_path is not None:
            return Path(checkpoint_path)
        if not self.baseline.exists():
            raise VggtoolError(f"{self.path} has no baseline {BEST}: train first or pass --checkpoint")
        return self.baseline


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
