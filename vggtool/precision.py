"""The precision and memory format of training steps, per device: bf16 autocast where the GPU or the CPU
has it natively, float32 on other CPUs, and what a run records of it."""

from __future__ import annotations

from pathlib import Path

import torch

from vggtool import cpu
from vggtool.config import TrainConfig
from vggtool.errors import VggtoolError


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision of training steps (evaluation stays float32). On CUDA: bf16 where the GPU has it, else fp16
    with a gradient scaler. On a CPU: bf16 autocast where it has native bf16 (AVX512_BF16 or AMX), else float32;
    `--amp bf16` on a CPU without it and `--amp fp16` on any CPU are refused."""
    if cfg.amp == "off":
        return None
    if device.type == "cuda":
        if cfg.amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    if cfg.amp == "fp16":
        raise VggtoolError(f"--amp fp16 needs a CUDA device: {device.type} has no float16 training kernels "
                           "(--amp bf16 on a CPU with avx512_bf16 or amx_bf16, or --amp off)")
    if cpu.has_native_bf16():
        return torch.bfloat16
    if cfg.amp == "bf16":
        raise VggtoolError(f"--amp bf16 needs a CPU with native bf16 ({' or '.join(cpu.BF16_FLAGS)}); this one "
                           f"({cpu.cpu_info()['cpu_model']}) has neither, where bf16 is slower than float32: "
                           "use --amp off")
    return None


def precision(cfg: TrainConfig, device: torch.device) -> str:
    """What training steps compute in, as recorded in config.json and metrics.jsonl: bf16, fp16 or fp32."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[amp_dtype(cfg, device)]


def channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """The memory format of training: `--channels-last on|off`, or auto: channels_last on CUDA (tensor cores),
    contiguous on a CPU, where channels_last was no faster worth the name (README, "Training on a CPU")."""
    return cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")


def same_precision(trained_in: str, now: str, run_dir: Path) -> None:
    """A resumed run goes on in the precision it began in, so that it ends as an uninterrupted one would
    (checkpoints before precision was recorded trained in float32 on a CPU)."""
    if trained_in != now:
        flag = {"fp32": "off"}.get(trained_in, trained_in)
        raise VggtoolError(f"{run_dir} trained in {trained_in} so far and would go on in {now} here: "
                           f"resume with --amp {flag}")
