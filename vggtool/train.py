"""Training: the report's recipe by default, resumable, selected on validation.

Every epoch writes `last.safetensors` (model, optimizer, RNG state, config)
atomically; the best epoch on the validation split is kept as
`best.safetensors`. Shuffling and augmentation are seeded per epoch, so a run
interrupted and resumed on CPU ends with the same weights as one that was not.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from vggtool import checkpoint
from vggtool.config import TrainConfig
from vggtool.data import Splits, batches
from vggtool.distributed import World, check_launch, device_for, join, leave
from vggtool.errors import VggtoolError
from vggtool.evaluate import EvalResult, evaluate, torch_predict
from vggtool.files import write_json, write_text
from vggtool.models import ArchSpec, build_model, check_compatible
from vggtool.precision import amp_dtype, channels_last, precision, same_precision
from vggtool.runs import BEST, CONFIG, LAST, METRICS

# An extra loss term added to cross-entropy, from the (augmented) inputs and
# the model's logits: distillation from a teacher, a sparsity penalty.
ExtraLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Observer(Protocol):
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, done: int, loss: float, acc: float, lr: float, images_per_s: float) -> None: ...
    def epoch_end(self, record: dict) -> None: ...


class Silent:
    def epoch_start(self, epoch, epochs, steps):
        pass

    def step(self, done, loss, acc, lr, images_per_s):
        pass

    def epoch_end(self, record):
        pass


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val: EvalResult | None
    epochs_run: int


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VggtoolError("device cuda requested but no CUDA device is available")
    return torch.device(name)


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a global step: a pure function, so resuming needs no scheduler state."""
    epoch = step / steps_per_epoch
    lr = cfg.peak_lr
    if cfg.schedule == "onecycle":
        total = cfg.epochs * steps_per_epoch
        peak = 0.3 * total
        lo, end = lr / 25, lr / 1e4
        if step < peak:
            return lo + (lr - lo) * (1 - math.cos(math.pi * step / peak)) / 2
        return end + (lr - end) * (1 + math.cos(math.pi * (step - peak) / (total - peak))) / 2
    if cfg.schedule == "cosine":  # from the peak straight down: fine-tuning starts from trained weights
        return lr * (1 + math.cos(math.pi * step / (cfg.epochs * steps_per_epoch))) / 2
    if epoch < cfg.warmup_epochs:
        return lr * (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    return lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)


def _epoch_generators(cfg: TrainConfig, epoch: int) -> tuple[torch.Generator, torch.Generator]:
    base = cfg.seed * 1_000_003 + epoch * 2
    return torch.Generator().manual_seed(base), torch.Generator().manual_seed(base + 1)


def _optimizer(model, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _save_last(run_dir: Path, model, optimizer, cfg: TrainConfig, spec: ArchSpec, epoch: int, best: dict,
               world_size: int = 1) -> None:
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, s in opt["state"].items():
        for name, t in s.items():
            if isinstance(t, torch.Tensor):
                state[f"optim.{i}.{name}"] = t
    state["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["rng.cuda"] = torch.cuda.get_rng_state()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]
    meta = {"kind": "training-state", "epoch": epoch, "config": cfg.to_dict(), "spec": spec.to_dict(),
            "best": best, "param_groups": groups, "world_size": world_size,
            "precision": precision(cfg, next(model.parameters()).device)}
    checkpoint.save(run_dir / LAST, state, meta)


def _load_last(run_dir: Path, model, optimizer) -> tuple[int, dict, str | None]:
    state, meta = checkpoint.read(run_dir / LAST)
    if meta.get("kind") != "training-state":
        raise VggtoolError(f"{run_dir / LAST} is not a vggtool training checkpoint")
    weights = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    check_compatible(model, weights, f"checkpoint {run_dir / LAST}")
    model.load_state_dict(weights)
    opt_state: dict = {}
    for k, v in state.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            opt_state.setdefault(int(i), {})[name] = v
    groups = [{**g, "params": list(range(len(list(model.parameters()))))} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    torch.set_rng_state(state["rng.torch"])
    if "rng.cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng.cuda"])
    return meta["epoch"], meta["best"], meta.get("precision")


def saved_config(run_dir: Path) -> TrainConfig:
    if not (Path(run_dir) / LAST).exists():
        raise VggtoolError(f"nothing to resume: {run_dir} holds no {LAST}")
    _, meta = checkpoint.read(Path(run_dir) / LAST)
    return TrainConfig.from_dict(meta["config"])


def preflight(cfg: TrainConfig) -> torch.device:
    """The device training will use, once the options that need another are refused
    (before any process group is set up or anything is written)."""
    device = pick_device(cfg.device)
    amp_dtype(cfg, device)
    if cfg.sync_bn and device.type != "cuda":
        raise VggtoolError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernel)")
    if cfg.compile:
        compile_unavailable()
    check_launch(device)
    return device


def compile_unavailable() -> None:
    """A one-line error where this stack cannot torch.compile (torch 2.0 on Python 3.11, for one)."""
    if not hasattr(torch, "compile"):
        raise VggtoolError("--compile needs torch >= 2.0")
    try:
        from torch._dynamo.eval_frame import check_if_dynamo_supported
    except ImportError:
        return
    try:
        check_if_dynamo_supported()
    except RuntimeError as e:
        raise VggtoolError(f"--compile is unavailable on this stack: {e}") from None


def _prepare(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, world: World) -> torch.nn.Module:
    """What the training steps call: the model, with SyncBatchNorm, torch.compile and DDP as asked."""
    runner = model
    if cfg.compile:
        runner = torch.compile(runner)
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda" else None)
    return runner


def train(
    cfg: TrainConfig,
    splits: Splits,
    run_dir: Path,
    resume: bool = False,
    observer: Observer | None = None,
) -> TrainResult:
    """Train as `cfg` says; under torchrun, as one of several processes (see `vggtool.distributed`)."""
    run_dir = Path(run_dir)
    device = preflight(cfg)
    world = join(device, cfg.dist_timeout)
    try:
        return _train(cfg, splits, run_dir, resume, observer if world.main else None, world,
                      device_for(device, world))
    except RuntimeError as e:
        if not world.distributed:
            raise
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise VggtoolError(f"rank {world.rank}: lost the other training processes ({first[:200]}); "
                           f"collectives wait at most {cfg.dist_timeout:g} s (--dist-timeout)") from None
    finally:
        leave(world)


def _train(cfg: TrainConfig, splits: Splits, run_dir: Path, resume: bool, observer: Observer | None, world: World,
           device: torch.device) -> TrainResult:
    observer = observer or Silent()
    if cfg.batch_size % world.size:
        raise VggtoolError(f"the global batch {cfg.batch_size} does not split evenly over {world.size} processes")
    if len(splits.train) < cfg.batch_size:
        raise VggtoolError(f"batch size {cfg.batch_size} exceeds the {len(splits.train)} training images")
    spec = ArchSpec(cfg.arch, len(splits.classes), cfg.width, cfg.dropout)
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    if cfg.sync_bn and world.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    memory_format = torch.channels_last if channels_last(cfg, device) else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = _optimizer(model, cfg)
    start_epoch, best = 0, {"epoch": -1, "top1_err": None, "top5_err": None}
    if resume:
        if not (run_dir / LAST).exists():
            raise VggtoolError(f"nothing to resume: {run_dir / LAST} does not exist")
        start_epoch, best, trained_in = _load_last(run_dir, model, optimizer)
        same_precision(trained_in or ("fp32" if device.type == "cpu" else precision(cfg, device)),
                        precision(cfg, device), run_dir)
        start_epoch += 1
        if world.main:
            _truncate_metrics(run_dir / METRICS, start_epoch)
    elif (run_dir / LAST).exists():
        raise VggtoolError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --run-dir")
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / CONFIG, {"config": cfg.to_dict(), "spec": spec.to_dict(), "device": str(device),
                                      "precision": precision(cfg, device), "channels_last": channels_last(cfg, device),
                                      "synthetic_data": splits.synthetic, "world_size": world.size})
    runner = _prepare(model, cfg, device, world)
    train_split = type(splits.train)(splits.train.images.to(device), splits.train.labels.to(device))
    scaler = _grad_scaler(amp_dtype(cfg, device) == torch.float16)
    best_val = None
    for epoch in range(start_epoch, cfg.epochs):
        stats = train_one_epoch(runner, optimizer, train_split, cfg, epoch, scaler, observer, world=world)
        val = None
        if len(splits.val):  # every process evaluates the same images: the same figure, no exchange needed
            val = evaluate(torch_predict(model, device), batches(splits.val, cfg.eval_batch_size, device=device))
        record = {"epoch": epoch, **stats, "val_top1_err": val.top1_err if val else None,
                  "val_top5_err": val.top5_err if val else None, "world_size": world.size}
        improved = val is None or best["top1_err"] is None or val.top1_err < best["top1_err"]
        if improved:
            best = {"epoch": epoch, "top1_err": val.top1_err if val else None, "top5_err": val.top5_err if val else None}
            best_val = val
        if world.main:  # only the first process writes
            if improved:
                checkpoint.save(run_dir / BEST, model.state_dict(),
                                {"kind": "model", "spec": spec.to_dict(), "config": cfg.to_dict(), "epoch": epoch,
                                 "val": best})
            _save_last(run_dir, model, optimizer, cfg, spec, epoch, best, world.size)
            with open(run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
        world.barrier()  # the checkpoint of this epoch exists before any process goes on
        observer.epoch_end(record)
    return TrainResult(run_dir, best["epoch"], best_val, cfg.epochs - start_epoch)


def _grad_scaler(enabled: bool):
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        return amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def _truncate_metrics(path: Path, epochs: int) -> None:
    """Drop log lines of epochs whose checkpoint was never written (a kill in between)."""
    if path.exists():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] < epochs]
        write_text(path, "".join(line + "\n" for line in keep))


def train_one_epoch(model, optimizer, split, cfg: TrainConfig, epoch: int, scaler=None,
                    observer: Observer | None = None, extra_loss: ExtraLoss | None = None,
                    world: World = World()) -> dict:
    """One pass over `split` with the schedule of `cfg`; returns the epoch's statistics.
    `extra_loss(x, logits)`, if given, is added to the cross-entropy. With several
    processes, each takes its share of every global batch of `cfg.batch_size`
    (the same seeded order and augmentation as one process) and the statistics
    are summed over all of them."""
    observer = observer or Silent()
    device = next(model.parameters()).device
    amp = amp_dtype(cfg, device)
    scaler = scaler or _grad_scaler(amp == torch.float16)
    steps = len(split) // cfg.batch_size
    observer.epoch_start(epoch, cfg.epochs, steps)
    model.train()
    order_gen, aug_gen = _epoch_generators(cfg, epoch)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    lr = cfg.lr
    for i, (x, y) in enumerate(batches(split, cfg.batch_size, device=device, shuffle=True, generator=order_gen,
                                        drop_last=True, augment_with=aug_gen if cfg.augment else None,
                                        channels_last=channels_last(cfg, device), rotation=cfg.rotation,
                                        shard=(world.rank, world.size))):
        lr = learning_rate(cfg, epoch * steps + i, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if extra_loss is not None:
                loss = loss + extra_loss(x, logits)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if i % 10 == 0 or i == steps - 1:  # the only host synchronisation inside the epoch
            observer.step(i + 1, float(loss_sum) / seen, float(correct) / seen, lr,
                          seen * world.size / (time.perf_counter() - t0))
    loss_total, correct_total, seen_total = world.all_sum([float(loss_sum), float(correct), float(seen)], device)
    seconds = time.perf_counter() - t0
    return {"lr": lr, "train_loss": loss_total / max(seen_total, 1), "train_acc": correct_total / max(seen_total, 1),
            "images_per_s": seen_total / seconds, "step_ms": 1000 * seconds / max(steps, 1), "seconds": seconds,
            "precision": precision(cfg, device)}


def finetune_config(cfg: TrainConfig, epochs: int, lr: float, schedule: str = "onecycle",
                    amp: str | None = None) -> TrainConfig:
    """A run's training settings turned into a fine-tuning schedule: `epochs` of
    `schedule` peaking at `lr`, contiguous memory (pruning masks are hooks on the
    weights and keep their own layout), in the run's precision unless `amp` says another;
    the run's regularisation (weight decay, label smoothing, augmentation) stays."""
    return replace(cfg, epochs=epochs, lr=lr, schedule=schedule, warmup_epochs=0, channels_last="off",
                   lr_scaling="none", compile=False, sync_bn=False, amp=amp or cfg.amp)


def distillation(teacher, temperature: float, weight: float) -> ExtraLoss:
    """Knowledge distillation (Hinton et al. 2015) as an extra loss term:
    weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over
    the batch. The teacher sees the same augmented images, in eval mode."""
    teacher.eval()

    def loss(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher.to(x.device)(x).float()
        return weight * temperature**2 * F.kl_div(F.log_softmax(logits.float() / temperature, dim=1),
                                                  F.softmax(target / temperature, dim=1), reduction="batchmean")

    return loss


def finetune(model, train_split, cfg: TrainConfig, *, val_split=None, extra_loss: ExtraLoss | None = None,
             observer: Observer | None = None) -> dict:
    """Fine-tune `model` in place: SGD with `cfg`'s momentum and weight decay,
    `cfg`'s schedule over `cfg.epochs`, on the training split only.

    With a non-empty `val_split` the best epoch on it is kept (the test split
    never chooses). Used by every recipe that fine-tunes. Returns what happened.
    """
    if len(train_split) < cfg.batch_size:
        raise VggtoolError(f"fine-tuning needs at least one batch of {cfg.batch_size} training images, "
                           f"got {len(train_split)}")
    device = pick_device(cfg.device)
    model.to(device)
    optimizer = _optimizer(model, cfg)
    split = type(train_split)(train_split.images.to(device), train_split.labels.to(device))
    scaler = _grad_scaler(amp_dtype(cfg, device) == torch.float16)  # one scaler for the run: its scale carries across epochs
    history, best, best_state = [], None, None
    for epoch in range(cfg.epochs):
        stats = train_one_epoch(model, optimizer, split, cfg, epoch, scaler, observer, extra_loss)
        record = {"epoch": epoch, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
                  "precision": stats["precision"], "seconds": stats["seconds"]}
        if val_split is not None and len(val_split):
            record["val_top1_err"] = evaluate(torch_predict(model, device),
                                              batches(val_split, cfg.eval_batch_size, device=device)).top1_err
            if best is None or record["val_top1_err"] < best["val_top1_err"]:
                best = record
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(record)
        if observer is not None:
            observer.epoch_end({**stats, **record, "val_top1_err": record.get("val_top1_err")})
    if best_state is not None:
        # copied in place rather than through load_state_dict, which torch 2.0's per-channel QAT observers
        # cannot read back (they save min_val and expect min_vals)
        with torch.no_grad():
            for key, value in model.state_dict().items():
                value.copy_(best_state[key])
    model.cpu().eval()
    return {"epochs": cfg.epochs, "lr": cfg.lr, "schedule": cfg.schedule, "history": history,
            "best_epoch": best["epoch"] if best else cfg.epochs - 1}
