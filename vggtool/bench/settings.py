"""How a bench measures: one frozen BenchSettings, built by keyword, saved with the results.

The defaults are measured choices (docs/bench.md gives the measurements); `quick()`
is the minutes-on-2-cores profile beside them, as `vggtool train` has its profiles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from vggtool.errors import VggtoolError
from vggtool.runtimes import RUNTIMES

PROTOCOLS = ("time", "report")


def option(default, help: str, **meta):
    """A setting that is also a `vggtool bench` option (`vggtool.options.config_params` makes it)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    threads: int = option(0, "Threads of every runtime (0 = its default).")
    cpus: tuple[int, ...] = ()  # (): no pinning
    # openvino adds openvino-bf16 rows where the CPU has native bf16
    runtime: tuple[str, ...] = option(("onnxruntime",), "Where ONNX variants run (repeatable).", choices=RUNTIMES,
                                      metavar="RUNTIME")
    batch_size: int = option(16, "The protocol batch (the report's).")
    # many short blocks repeated sample the machine's changing speed better than a few long ones
    rounds: int = option(30, "The fewest interleaved rounds.")
    time_budget: float = option(600.0, "Seconds of timing, rounds added while it lasts (0: --rounds).")
    loads: int = option(3, "Parts, each loading every variant afresh.")
    protocol: str = option("time", "time: batches for --min-time; report: each image once.", choices=PROTOCOLS)
    min_time: float = option(0.2, "Seconds each timed block covers.")
    latency_images: int = option(0, "Test images timed (0 = all).")
    accuracy_images: int = option(0, "Test images scored, class-balanced (0 = all).")
    # Measured defaults, not flags:
    warmup: int = 30  # the most warm-up calls, once per variant and batch size; stops once the call time settles
    single_calls: int = 3  # the fewest timed batch-1 calls a block
    # seconds idle before each variant's turn, so no thread pool still spins from the last: after 0.02 s an ONNX
    # Runtime session's spinning pool still slowed the next variant's first calls, so onnx-int8's speed-up depended
    # on the block length (quick profile: 3.0x with 0.03 s blocks, 4.2x with 0.3 s; with 0.05 s idle 3.95x)
    idle_gap: float = 0.05

    def __post_init__(self):
        for name in ("batch_size", "rounds", "single_calls", "loads"):
            if getattr(self, name) <= 0:
                raise VggtoolError(f"{name.replace('_', '-')} must be positive")
        if min(self.threads, self.warmup, self.latency_images, self.min_time, self.accuracy_images,
               self.idle_gap, self.time_budget) < 0:
            raise VggtoolError("threads, warmup, latency images, accuracy images, min time, idle gap and time "
                               "budget must not be negative")
        unknown = [r for r in self.runtime if r not in RUNTIMES]
        if unknown or not self.runtime:
            raise VggtoolError(f"unknown runtime {(unknown or [''])[0]!r}: choose one of {', '.join(RUNTIMES)}")
        if self.protocol not in PROTOCOLS:
            raise VggtoolError(f"unknown timing protocol {self.protocol!r}: choose one of {', '.join(PROTOCOLS)}")

    @classmethod
    def quick(cls, **chosen) -> BenchSettings:
        """Minutes on 2 cores: fewer images timed, in shorter blocks, for a shorter budget (PROFILES["quick"])."""
        return replace(cls(**PROFILES["quick"]), **chosen)

    @classmethod
    def chosen(cls, quick: bool = False, **options) -> BenchSettings:
        """The defaults (or `quick()`), then every option that is not None."""
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if v not in (None, ())}
        return cls.quick(**given) if quick else cls(**given)


PROFILES = {"default": {}, "quick": {"latency_images": 1000, "accuracy_images": 2000, "min_time": 0.03,
                                     "time_budget": 300.0}}


def parse_cpus(text: str | None) -> tuple[int, ...]:
    """'0-1,4' -> (0, 1, 4); refuses CPUs this machine does not offer."""
    if not text:
        return ()
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise VggtoolError(f"cannot parse CPU list {text!r}: use a form like 0-1 or 0,2") from None
    available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    missing = sorted(cpus - set(available))
    if missing:
        raise VggtoolError(f"CPU(s) {missing} are not available here (available: {sorted(available)})")
    return tuple(sorted(cpus))


def apply_settings(settings: BenchSettings) -> None:
    """Pin the process and size torch's thread pool; ONNX Runtime gets `threads` per session."""
    if settings.cpus:
        try:
            os.sched_setaffinity(0, settings.cpus)
        except (AttributeError, OSError) as e:
            raise VggtoolError(f"cannot pin to CPUs {list(settings.cpus)}: {e}") from None
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
