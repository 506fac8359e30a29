import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from vggtool import data
from vggtool.errors import VggtoolError

from .conftest import invoke


def write_official(folder, n_train=6, n_test=4):
    """Hand-written files in the official on-disk layout (as the real archive holds them)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        obj = {"batch_label": f"{name} batch", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
               "fine_labels": list(range(n)), "coarse_labels": [0] * n, "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["g"] * 20}, f)


def test_reads_official_format_channel_major(tmp_path):
    write_official(tmp_path / "cifar-100-python")
    images, labels = data.load_split(tmp_path, "train")
    with open(tmp_path / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"]
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == list(range(6))
    # channel c, row r, column k of image i is byte c*1024 + r*32 + k of its row
    assert images[2, 1, 5, 7] == raw[2, 1024 + 5 * 32 + 7]
    assert images[3, 2, 31, 0] == raw[3, 2048 + 31 * 32]


def test_extracted_copy_with_other_checksums_is_accepted_with_warning(tmp_path):
    write_official(tmp_path / "cifar-100-python")
    with pytest.warns(UserWarning, match="checksums"):
        report = data.fetch(tmp_path, download=False)
    assert not report.verified and set(report.mismatched) == {"train", "test", "meta"}


def test_offline_without_data_names_both_fixes_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data, "download_url", offline)
    with pytest.raises(VggtoolError) as err:
        data.fetch(tmp_path / "d")
    msg = str(err.value)
    assert "--data-dir" in msg and "--synthetic" in msg and "\n" not in msg
    assert not (tmp_path / "d").exists()  # the folder it made for the download is gone too


def _tarball(path: Path, add) -> None:
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        add(tar)


def test_download_goes_through_torchvision_with_the_official_md5_then_a_checked_extraction(tmp_path, monkeypatch):
    calls = []
    staged = tmp_path / "staged"
    write_official(staged / "cifar-100-python")

    def fake_download(url, root, filename, md5):
        calls.append((url, filename, md5))
        _tarball(Path(root) / filename, lambda tar: tar.add(staged / "cifar-100-python", "cifar-100-python"))

    real = data.check_integrity
    monkeypatch.setattr(data, "download_url", fake_download)
    monkeypatch.setattr(data, "check_integrity", lambda f, md5: f.endswith(".tar.gz") or real(f, md5))
    with pytest.warns(UserWarning):  # the fake files are not the official bytes
        report = data.fetch(tmp_path / "d")
    assert calls == [(data.CIFAR100.url, "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")]
    assert report.downloaded and report.path == tmp_path / "d" / "cifar-100-python"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["cifar-100-python"]
    assert data.load_split(tmp_path / "d", "test")[0].shape == (4, 3, 32, 32)


def test_an_archive_failing_its_md5_is_never_extracted(tmp_path, monkeypatch):
    staged = tmp_path / "staged"
    write_official(staged / "cifar-100-python")
    monkeypatch.setattr(data, "download_url", lambda url, root, filename, md5: _tarball(
        Path(root) / filename, lambda tar: tar.add(staged / "cifar-100-python", "cifar-100-python")))
    with pytest.raises(VggtoolError, match="md5"):
        data.fetch(tmp_path / "d")
    assert not (tmp_path / "d" / "cifar-100-python").exists()


@pytest.mark.parametrize("member", ["escape", "absolute", "symlink", "hardlink"])
def test_extraction_refuses_members_that_escape_or_link(tmp_path, member):
    import io
    import tarfile

    archive = tmp_path / "a.tar.gz"

    def add(tar):
        info = tarfile.TarInfo({"escape": "../outside.txt", "absolute": "/tmp/vggtool-outside.txt"}.get(
            member, "cifar-100-python/link"))
        if member == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif member == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
        else:
            info.size = 3
        tar.addfile(info, io.BytesIO(b"pwn") if info.isfile() else None)

    _tarball(archive, add)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(VggtoolError, match="refusing"):
        data.safe_extract(archive, dest)
    assert not any(dest.iterdir()) and not (tmp_path / "outside.txt").exists()


def test_data_cli_offline_is_one_line_error(workspace, monkeypatch):
    monkeypatch.setattr(data, "download_url", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    result = invoke("data", ok=False)
    assert result.exit_code == 1
    assert "Traceback" not in result.output and result.output.count("\n") == 1
    assert "vggtool data --synthetic" in result.output


def test_synthetic_refuses_to_overwrite_real_data(tmp_path):
    write_official(tmp_path / "cifar-100-python")
    with pytest.raises(VggtoolError, match="real CIFAR-100"):
        data.write_synthetic(tmp_path)


def test_synthetic_data_is_in_official_format(workspace):
    invoke("data", "--synthetic", "--train-per-class", "3", "--test-per-class", "2", "--classes", "5")
    with open(workspace / "data" / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert set(raw) >= {"data", "fine_labels", "coarse_labels", "filenames", "batch_label"}
    assert raw["data"].shape == (15, 3072) and raw["data"].dtype == np.uint8
    splits = data.load_splits(workspace / "data", val_size=5, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 5, 10)
    assert splits.synthetic and len(splits.classes) == 5
    assert "synthetic" in invoke("data").output


def test_validation_split_is_seeded_and_disjoint(session_home):
    a = data.load_splits(session_home / "data", val_size=50, seed=3)
    b = data.load_splits(session_home / "data", val_size=50, seed=3)
    assert torch.equal(a.val.images, b.val.images)
    train_rows = {bytes(x.flatten().tolist()) for x in a.train.images}
    assert not any(bytes(x.flatten().tolist()) in train_rows for x in a.val.images)
    with pytest.raises(VggtoolError, match="validation size"):
        data.load_splits(session_home / "data", val_size=10_000)


def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.rand(8, 3, 32, 32)
    a = data.augment(x, torch.Generator().manual_seed(1))
    b = data.augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)


def test_batches_normalise_and_cover_split(session_home):
    split = data.load_splits(session_home / "data", val_size=0).test
    seen = 0
    for x, y in data.batches(split, 32):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        seen += len(y)
    assert seen == len(split)


def test_pickle_loader_refuses_code(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_official(folder)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "train", "wb") as f:
        pickle.dump({"data": Evil()}, f)
    with pytest.raises(VggtoolError, match="refusing to load"):
        data.load_split(tmp_path, "train")
