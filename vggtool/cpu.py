"""What the CPU offers: int8 kernels differ between AVX2 and AVX-512 VNNI machines,
so measurements record it and quantizers choose by it."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

WANTED = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]


@functools.cache  # read once a process: training asks every step's precision
def _read() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_info() -> dict:
    model, flags = _read()
    return {"cpu_model": model, "cpu_flags": " ".join(f for f in WANTED if f in flags), "logical_cpus": os.cpu_count()}


def has_vnni() -> bool:
    """8-bit dot products (AVX-512 VNNI or AVX-VNNI): without them x86 int8 sums of u8 x s8 can saturate."""
    flags = _read()[1]
    return "avx512_vnni" in flags or "avx_vnni" in flags


BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def has_native_bf16() -> bool:
    """bf16 arithmetic in hardware (AVX512_BF16 or AMX): where CPU autocast to bf16 pays; elsewhere it is emulated
    and slower than float32 (pytorch/pytorch #86550, #118499)."""
    return any(f in _read()[1] for f in BF16_FLAGS)


def reduce_range(choice: str) -> bool:
    """Resolve a --reduce-range choice: on, off, or auto (on where the CPU lacks VNNI)."""
    return choice == "on" or (choice == "auto" and not has_vnni())
