import json

import pytest
import torch

from vggtool import checkpoint
from vggtool.config import TrainConfig, resolve
from vggtool.data import load_splits
from vggtool.errors import VggtoolError
from vggtool.runs import BEST, LAST, METRICS
from vggtool.train import learning_rate, train

TINY = dict(arch="vgg11_bn", width=0.125, batch_size=32, val_size=100, lr=0.05, schedule="onecycle", warmup_epochs=0)


class Interrupt:
    """An observer that raises KeyboardInterrupt partway through a given epoch."""

    def __init__(self, epoch):
        self.epoch, self.current = epoch, -1

    def epoch_start(self, epoch, epochs, steps):
        self.current = epoch

    def step(self, done, *args):
        if self.current == self.epoch and done > 1:
            raise KeyboardInterrupt

    def epoch_end(self, record):
        pass


@pytest.fixture(scope="module")
def splits(session_home):
    return load_splits(session_home / "data", val_size=100, seed=0)


def test_loss_falls_over_two_epochs(splits, tmp_path):
    train(resolve("quick", **TINY, epochs=2), splits, tmp_path)
    records = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[1]["train_loss"] < records[0]["train_loss"] - 0.1


def test_resume_after_interrupt_equals_uninterrupted(splits, tmp_path):
    cfg = resolve("quick", **TINY, epochs=3)
    train(cfg, splits, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, splits, tmp_path / "cut", observer=Interrupt(epoch=1))
    _, meta = checkpoint.read(tmp_path / "cut" / LAST)
    assert meta["epoch"] == 0  # the interrupted epoch left no checkpoint, half-written or otherwise
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.endswith(".tmp")]
    train(cfg, splits, tmp_path / "cut", resume=True)
    a, _ = checkpoint.read(tmp_path / "straight" / LAST)
    b, _ = checkpoint.read(tmp_path / "cut" / LAST)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "cut" / METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_best_is_chosen_on_validation(splits, tmp_path):
    train(resolve("quick", **TINY, epochs=2), splits, tmp_path)
    records = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    _, meta = checkpoint.read(tmp_path / BEST)
    best = min(records, key=lambda r: r["val_top1_err"])
    assert meta["epoch"] == best["epoch"]
    assert meta["val"]["top1_err"] == best["val_top1_err"]


def test_refuses_to_overwrite_a_run(splits, tmp_path):
    cfg = resolve("quick", **TINY, epochs=1)
    train(cfg, splits, tmp_path)
    with pytest.raises(VggtoolError, match="--resume"):
        train(cfg, splits, tmp_path)


def test_report_schedule():
    cfg = TrainConfig()
    steps = 10
    assert learning_rate(cfg, 0, steps) == pytest.approx(0.01)  # warm-up: first of ten steps
    assert learning_rate(cfg, 9, steps) == pytest.approx(0.1)
    assert learning_rate(cfg, 29 * steps, steps) == pytest.approx(0.1)
    assert learning_rate(cfg, 30 * steps, steps) == pytest.approx(0.02)
    assert learning_rate(cfg, 60 * steps, steps) == pytest.approx(0.004)
    assert learning_rate(cfg, 95 * steps, steps) == pytest.approx(0.0008)


def test_onecycle_rises_then_falls():
    cfg = resolve("quick")
    lrs = [learning_rate(cfg, s, 100) for s in range(0, cfg.epochs * 100, 50)]
    peak = max(lrs)
    assert peak == pytest.approx(cfg.lr, rel=0.01)
    assert lrs[0] < peak / 10 and lrs[-1] < peak / 10


@pytest.mark.parametrize("override,message", [
    ({"epochs": 0}, "epochs must be positive"),
    ({"epochs": -3}, "epochs must be positive"),
    ({"batch_size": 0}, "batch-size must be positive"),
    ({"lr": 0.0}, "learning rate must be positive"),
    ({"lr": -0.1}, "learning rate must be positive"),
    ({"arch": "vgg99"}, "unknown architecture"),
])
def test_bad_config(override, message):
    with pytest.raises(VggtoolError, match=message):
        resolve("full", **override)


def test_profiles_layer_and_save():
    cfg = resolve("quick", epochs=3)
    assert (cfg.arch, cfg.epochs, cfg.schedule) == ("vgg11_bn", 3, "onecycle")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    full = resolve("full")
    assert (full.arch, full.epochs, full.batch_size, full.lr, full.milestones) == (
        "vgg19_bn", 100, 128, 0.1, (30, 60, 90))
    with pytest.raises(VggtoolError, match="unknown profile"):
        resolve("medium")


def test_progress_lines_state_the_time_left_and_the_full_profile_estimate():
    import io

    from rich.console import Console

    from vggtool.console import TrainDisplay

    out = io.StringIO()
    display = TrainDisplay(Console(file=out, width=200), hint_total="try --profile quick")
    with display:
        for epoch in range(2):
            display.epoch_start(epoch, 4, 20)
            for step in range(1, 21):
                display.step(step, 1.0, 0.5, 0.1, 100.0)
            display.epoch_end({"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "val_top1_err": 0.4,
                               "images_per_s": 100.0, "seconds": 1.0})
    text = out.getvalue()
    assert text.count("estimated time for 4 epochs at this pace") == 1 and "try --profile quick" in text
    assert "epoch 1/4:" in text and "epoch 2/4:" in text and text.count("left ~") == 2
