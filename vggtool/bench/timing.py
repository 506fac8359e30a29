"""Timing primitives: pure functions over a predictor and an injectable clock, the
round planner, and the Timer that loads and warms a part's variants and times their turns."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vggtool.bench.env import peak_rss_mb
from vggtool.bench.settings import BenchSettings
from vggtool.compress import load_variant
from vggtool.data import Split, batches
from vggtool.evaluate import Predict

SETTLE_BLOCK, SETTLE_TOLERANCE = 3, 0.05
MAX_ROUNDS = 1000  # the most rounds a time budget buys


def prepare(split: Split, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised batches made before any timing, so no tensor work runs between timed calls
    (torch's OpenMP threads would otherwise spin beside ONNX Runtime's and skew its figure)."""
    return list(batches(split, batch_size))


def warm_up(predict: Predict, inputs: list[torch.Tensor], max_calls: int,
            clock: Callable[[], float] = time.perf_counter) -> int:
    """Untimed calls until the per-call time settles (two blocks of calls within 5% of
    each other) or `max_calls` are spent; returns the calls made."""
    previous, calls = None, 0
    while calls < max_calls:
        times = []
        for _ in range(min(SETTLE_BLOCK, max_calls - calls)):
            start = clock()
            predict(inputs[calls % len(inputs)])
            times.append(clock() - start)
            calls += 1
        block = statistics.median(times)
        if previous is not None and abs(block - previous) <= SETTLE_TOLERANCE * previous:
            break
        previous = block
    return calls


@dataclass(frozen=True)
class Timing:
    """One timed block: milliseconds per image of each call, and how much was timed."""

    call_ms_per_image: tuple[float, ...]
    images: int
    seconds: float

    @property
    def calls(self) -> int:
        return len(self.call_ms_per_image)

    @property
    def ms_per_image(self) -> float:
        """Time summed over the block, per image (the report's figure)."""
        return 1000 * self.seconds / self.images


def _idle(gap: float) -> None:
    if gap > 0:
        time.sleep(gap)


def batch_timing(predict: Predict, prepared: list, warmup: int, min_time: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter, gap: float = 0.0) -> Timing:
    """Time inside predict over whole batches: every batch once (the report's protocol,
    `min_time` 0), or cycling through them until `min_time` seconds are covered, as
    torch.utils.benchmark's blocked_autorange and pyperf calibrate their loops. `gap`
    seconds idle first, then `warmup` untimed calls at most (fewer once the time settles)."""
    _idle(gap)
    warm_up(predict, [x for x, _ in prepared], warmup, clock)
    seconds, images, per_image = 0.0, 0, []
    while len(per_image) < len(prepared) if min_time <= 0 else (seconds < min_time or not per_image):
        x = prepared[len(per_image) % len(prepared)][0]
        start = clock()
        predict(x)
        took = clock() - start
        seconds, images = seconds + took, images + len(x)
        per_image.append(1000 * took / len(x))
    return Timing(tuple(per_image), images, seconds)


def batch1_times(predict: Predict, inputs: list[torch.Tensor], warmup: int, calls: int, min_time: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter, gap: float = 0.0) -> list[float]:
    """Milliseconds of each single-image prediction: at least `calls` of them and at
    least `min_time` seconds' worth, after `gap` idle seconds and a warm-up."""
    _idle(gap)
    warm_up(predict, inputs, warmup, clock)
    times: list[float] = []
    while len(times) < calls or sum(times) < 1000 * min_time:
        x = inputs[len(times) % len(inputs)]
        start = clock()
        predict(x)
        times.append((clock() - start) * 1000)
    return times


def batch_rounds(timings: list[Timing], protocol: str) -> list[list[float]]:
    """Per-round ms/image figures: every call's (protocol time), or the round's sum per image
    (protocol report: each round times every image once, as the report did)."""
    return [list(t.call_ms_per_image) if protocol == "time" else [t.ms_per_image] for t in timings]


def planned_rounds(fewest: int, budget: float, done: int, seconds: float) -> int:
    """How many rounds a pass runs, re-planned after each one: as many as fit in `budget`
    seconds at the pace so far (`done` rounds in `seconds`), at least `fewest`, at most
    MAX_ROUNDS; exactly `fewest` without a budget."""
    if budget <= 0 or done <= 0:
        return fewest
    return max(fewest, min(MAX_ROUNDS, int(budget * done / max(seconds, 1e-9))))


def load_part(part: int, done: int, planned: int, loads: int) -> int:
    """The part (0-based, of `loads`) a pass is in after `done` of `planned` rounds, having
    been in `part`: it only advances, so a plan that grows never repeats a reload."""
    if done >= planned:
        return part
    return max(part, min(loads - 1, done * loads // max(planned, 1)))


def timing_inputs(latency: Split, batch_size: int, protocol: str) -> tuple[list, list[torch.Tensor]]:
    """The batches a block cycles through (whole ones only under protocol time: a partial
    last batch costs more per image) and the single images of batch-1 blocks."""
    timed = prepare(latency, batch_size)
    if protocol == "time" and len(timed) > 1 and len(timed[-1][0]) < batch_size:
        timed = timed[:-1]
    return timed, [x for x, _ in prepare(latency.subset(torch.arange(min(len(latency), 64))), 1)]


def _rotated(items: list, at: int) -> list:
    at %= len(items)
    return items[at:] + items[:at]


class Timer:
    """Every variant of a part loaded afresh and warmed (until its call time settles);
    `block` times one variant's turn of a round: its batch block, then its batch-1 block."""

    def __init__(self, folders: dict[str, tuple[Path, str | None]], latency: Split, settings: BenchSettings,
                 on_load: Callable[[str], None] | None = None):
        self.settings, self.variants = settings, {}
        self.timed, self.singles = timing_inputs(latency, settings.batch_size, settings.protocol)
        self.min_time = settings.min_time if settings.protocol == "time" else 0.0
        for name, (folder, runtime) in folders.items():  # each row's variant in its runtime (None: its own)
            if on_load:
                on_load(name)
            self.variants[name] = variant = load_variant(folder, settings.threads, runtime)
            warm_up(variant.predict, [x for x, _ in self.timed], settings.warmup)
            warm_up(variant.predict, self.singles, settings.warmup)

    def block(self, name: str, at: tuple[int, int]) -> tuple[Timing, list[float]]:
        """Each block goes on at `at` (batch, single image), where the variant's last one stopped."""
        predict, s = self.variants[name].predict, self.settings
        batch = batch_timing(predict, _rotated(self.timed, at[0]) if self.min_time > 0 else self.timed, 1,
                             self.min_time, gap=s.idle_gap)
        # no idle gap here: the same variant just ran, so no other library's threads still spin
        return batch, batch1_times(predict, _rotated(self.singles, at[1]), 1, s.single_calls, self.min_time)

    def close(self) -> float:
        """Drops the variants (before the next part's copies are made); the peak RSS in MB."""
        self.variants.clear()
        gc.collect()
        return peak_rss_mb()
