"""CIFAR-100: fetch, verify, load into memory, split, batch and augment.

The on-disk format is the official python version (`cifar-100-python/` with
pickled `train`, `test` and `meta`). Whole splits are held as uint8 tensors;
augmentation and normalisation run on batches, on the training device.
"""

from __future__ import annotations

import math
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR100
from torchvision.datasets.utils import check_integrity, download_url

from vggtool.errors import VggtoolError
from vggtool.files import atomic_dir

FOLDER = CIFAR100.base_folder  # "cifar-100-python"
FILES = {name: md5 for name, md5 in CIFAR100.train_list + CIFAR100.test_list}
FILES[CIFAR100.meta["filename"]] = CIFAR100.meta["md5"]
SYNTHETIC_KEY = "vggtool_synthetic"

# Per-channel statistics of the official CIFAR-100 training split (the report's).
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class FetchReport:
    path: Path
    verified: bool
    mismatched: tuple[str, ...]
    synthetic: bool
    downloaded: bool


@dataclass(frozen=True)
class Split:
    """A whole split in memory: images uint8 [N, 3, 32, 32], labels int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    synthetic: bool

    def get(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise VggtoolError(f"unknown split {name!r}: choose train, val or test")
        return getattr(self, name)


class _SafeUnpickler(pickle.Unpickler):
    """Reads the CIFAR pickles without letting a crafted file run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise VggtoolError(f"missing data file {path}") from None
    except Exception as e:  # corrupt pickles raise many types
        raise VggtoolError(f"data file {path} is not a readable CIFAR pickle: {e}") from None
    if not isinstance(obj, dict):
        raise VggtoolError(f"data file {path} does not hold a CIFAR dict")
    return obj


def dataset_dir(data_dir: Path) -> Path:
    return Path(data_dir) / FOLDER


def is_synthetic(data_dir: Path) -> bool:
    meta = dataset_dir(data_dir) / "meta"
    return meta.exists() and bool(_read_pickle(meta).get(SYNTHETIC_KEY, False))


def _present(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def _missing_data_error(data_dir: Path, reason: str) -> VggtoolError:
    return VggtoolError(
        f"CIFAR-100 is not in {data_dir} ({reason}): run `vggtool data` with internet access, "
        f"or point --data-dir / $VGGTOOL_DATA at a folder holding {FOLDER}/, "
        "or run `vggtool data --synthetic` for an offline stand-in"
    )


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into `dest`, refusing members that would land outside it,
    links and special files (checked for every member before anything is written)."""
    dest = Path(dest).resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                target = (dest / m.name).resolve()
                if m.issym() or m.islnk():
                    raise VggtoolError(f"{archive.name}: refusing link member {m.name!r}")
                if not (m.isfile() or m.isdir()):
                    raise VggtoolError(f"{archive.name}: refusing special member {m.name!r}")
                if Path(m.name).is_absolute() or not target.is_relative_to(dest):
                    raise VggtoolError(f"{archive.name}: refusing member {m.name!r}, which escapes {dest}")
            for m in members:
                tar.extract(m, dest, set_attrs=False, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise VggtoolError(f"{archive.name} is not a readable archive ({e})") from None


def fetch(data_dir: Path, download: bool = True) -> FetchReport:
    """Make sure `data_dir/cifar-100-python` holds CIFAR-100, downloading it if allowed.

    The official archive is md5-verified by torchvision. An already extracted
    folder whose checksums differ (a faithful re-export cannot match them) is
    accepted with a warning.
    """
    data_dir = Path(data_dir)
    folder = dataset_dir(data_dir)
    downloaded = False
    if not _present(folder):
        if not download:
            raise _missing_data_error(data_dir, "no extracted folder")
        if folder.exists() and any(folder.iterdir()):
            raise VggtoolError(f"{folder} is incomplete: it lacks one of {sorted(FILES)}; remove it and retry")
        created = not data_dir.exists()
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryDirectory(prefix=".download-", dir=data_dir) as tmp:
                download_url(CIFAR100.url, tmp, filename=CIFAR100.filename, md5=CIFAR100.tgz_md5)
                archive = Path(tmp) / CIFAR100.filename
                if not check_integrity(str(archive), CIFAR100.tgz_md5):  # never extract an unverified archive
                    raise VggtoolError(f"the downloaded {CIFAR100.filename} fails its md5 check; retry")
                safe_extract(archive, Path(tmp))
                if folder.exists():
                    folder.rmdir()  # empty, checked above
                shutil.move(str(Path(tmp) / FOLDER), str(folder))
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            if created and not any(data_dir.iterdir()):
                data_dir.rmdir()
            raise _missing_data_error(data_dir, f"download failed: {e}") from None
        downloaded = True
    mismatched = tuple(name for name, md5 in FILES.items() if not check_integrity(str(folder / name), md5))
    synthetic = is_synthetic(data_dir)
    if mismatched and not synthetic:
        warnings.warn(
            f"{folder}: checksums of {', '.join(mismatched)} differ from the official archive's; "
            "accepting the extracted folder as it is",
            stacklevel=2,
        )
    return FetchReport(folder, not mismatched, mismatched, synthetic, downloaded)


def load_split(data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One official split ('train' or 'test') as uint8 [N,3,32,32] images and int64 labels."""
    folder = dataset_dir(data_dir)
    if not _present(folder):
        raise _missing_data_error(Path(data_dir), f"no {FOLDER}/ with {', '.join(sorted(FILES))}")
    d = _read_pickle(folder / split)
    try:
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["fine_labels"], dtype=np.int64)
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    except (KeyError, ValueError) as e:
        raise VggtoolError(f"{folder / split} is not in CIFAR-100 format: {e}") from None
    if len(images) != len(labels):
        raise VggtoolError(f"{folder / split}: {len(images)} images but {len(labels)} labels")
    return images, torch.from_numpy(labels)


def class_names(data_dir: Path) -> tuple[str, ...]:
    meta = _read_pickle(dataset_dir(data_dir) / "meta")
    if "fine_label_names" not in meta:
        raise VggtoolError(f"{dataset_dir(data_dir) / 'meta'} has no fine_label_names")
    return tuple(meta["fine_label_names"])


def load_splits(data_dir: Path, val_size: int = 5000, seed: int = 0, train_subset: int = 0) -> Splits:
    """Train/validation/test in memory. Validation is a seeded carve-out of train.

    `train_subset` > 0 keeps that many of the remaining training images (seeded).
    """
    train, val = load_train_val(data_dir, val_size, seed, train_subset)
    test = Split(*load_split(data_dir, "test"))
    return Splits(train, val, test, class_names(data_dir), is_synthetic(data_dir))


def load_train_val(data_dir: Path, val_size: int = 5000, seed: int = 0, train_subset: int = 0) -> tuple[Split, Split]:
    """The training and validation splits of `load_splits`, without reading the test split."""
    images, labels = load_split(data_dir, "train")
    if not 0 <= val_size < len(labels):
        raise VggtoolError(f"validation size {val_size} must be in [0, {len(labels)}) for this data set")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = perm[val_size:], perm[:val_size]
    if train_subset:
        train_idx = train_idx[:train_subset]
    full = Split(images, labels)
    return full.subset(train_idx), full.subset(val_idx)


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    x = images_u8.float().div_(255)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator, rotation: float = 15.0) -> torch.Tensor:
    """The report's augmentation on a float batch in [0, 1], as one affine resampling.

    RandomCrop(32, padding=4) is an integer shift with black fill, the flip a sign
    on x, RandomRotation(`rotation` degrees) a rotation; nearest sampling, black outside.
    """
    n = x.shape[0]

    def uniform(lo, hi):
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    angle = uniform(-rotation, rotation) * math.pi / 180
    shift = torch.randint(-4, 5, (n, 2), generator=generator).float() * 2 / 32
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def batches(
    split: Split,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    shuffle: bool = False,
    augment_with: torch.Generator | None = None,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    channels_last: bool = False,
    rotation: float = 15.0,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches (and labels) on `device`.

    `generator` orders the shuffle; `augment_with` (a generator) turns on the
    report's augmentation. Both are explicit so a run can be replayed exactly.
    `shard=(rank, processes)` yields this process's equal slice of every batch,
    augmented exactly as one process would augment it.
    """
    rank, processes = shard
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        x = split.images[idx].to(device, non_blocking=True)
        y = split.labels[idx].to(device, non_blocking=True)
        if augment_with is not None:
            x = augment(x.float().div_(255), augment_with, rotation).mul_(255)
        if processes > 1:
            part = len(idx) // processes
            x, y = x[rank * part : (rank + 1) * part], y[rank * part : (rank + 1) * part]
        x = normalize(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y


def write_synthetic(
    data_dir: Path,
    train_per_class: int = 150,
    test_per_class: int = 20,
    classes: int = 100,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write a small learnable data set in the official on-disk format.

    Each class is a smooth, left-right symmetric colour pattern (so flips and
    small shifts keep it recognisable) plus per-image noise and brightness.
    A real CIFAR-100 folder is never overwritten.
    """
    folder = dataset_dir(data_dir)
    if _present(folder) and not is_synthetic(data_dir):
        raise VggtoolError(f"{folder} holds real CIFAR-100; refusing to overwrite it with synthetic data")
    if classes < 2 or train_per_class < 1 or test_per_class < 1:
        raise VggtoolError("synthetic data needs at least 2 classes and 1 image per class in each split")
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(classes, 3, 4, 4))
    coarse = (coarse + coarse[..., ::-1]) / 2
    templates = F.interpolate(torch.from_numpy(coarse).float(), size=(32, 32), mode="bicubic", align_corners=False)
    templates = (templates / templates.abs().amax(dim=(1, 2, 3), keepdim=True)).numpy()

    def make(per_class: int, name: str) -> dict:
        labels = np.repeat(np.arange(classes), per_class)
        rng.shuffle(labels)
        noise = rng.normal(scale=0.25, size=(len(labels), 3, 32, 32))
        gain = rng.uniform(0.6, 1.0, size=(len(labels), 1, 1, 1))
        img = 0.5 + 0.4 * gain * templates[labels] + 0.1 * noise
        data = np.clip(img * 255, 0, 255).astype(np.uint8).reshape(len(labels), 3072)
        return {
            "batch_label": f"synthetic {name} batch",
            "data": data,
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels % 20).tolist(),
            "filenames": [f"synthetic_{name}_{i}.png" for i in range(len(labels))],
        }

    meta = {
        "fine_label_names": [f"class_{i:03d}" for i in range(classes)],
        "coarse_label_names": [f"group_{i:02d}" for i in range(20)],
        SYNTHETIC_KEY: True,
    }
    with atomic_dir(folder, force=True) as tmp:
        for name, obj in (("train", make(train_per_class, "train")), ("test", make(test_per_class, "test")), ("meta", meta)):
            with open(tmp / name, "wb") as f:
                pickle.dump(obj, f, protocol=2)
    return folder
