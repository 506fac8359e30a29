"""Benchmark: every variant of a run measured under one set of conditions, with
repeats interleaved round robin so drift hits all alike, in parts that each load
every variant afresh (a Timer; optionally each in a fresh process of its own, a
ProcessTimer), with intervals that resample parts first, so they include how far
a figure moves between parts (fresh loads, and the machine's state meanwhile).

Two latency figures per variant: the report's protocol (the test split in
batches of `batch_size`, 16 in the report; time inside the model call summed,
per image) and batch-1 latency (warm-up, then many timed calls: median, p90,
IQR). Accuracy comes from the project's one `evaluate`. Results are flat rows
plus the environment; writing and rendering them is `report.publish`'s job.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from vggtool.compress import Variant, load_variant, versions
from vggtool.cpu import cpu_info
from vggtool.data import Split, batches
from vggtool.errors import VggtoolError
from vggtool.evaluate import Predict, evaluate
from vggtool.models import macs, param_count
from vggtool.bench.stats import (BOOTSTRAP, CONFIDENCE, MIN_INTERVAL_ROUNDS, bootstrap_center, bootstrap_ratio,
                                  moved, pooled_median, quantile, speedup, spread)

PROTOCOLS = ("time", "report")


@dataclass(frozen=True)
class BenchSettings:
    threads: int = 0  # 0: leave torch's default
    cpus: tuple[int, ...] = ()  # (): no pinning
    batch_size: int = 16
    rounds: int = 30  # the fewest interleaved rounds: many short blocks repeated better than a few long ones
    warmup: int = 30  # the most warm-up calls, once per variant and batch size; stops once the call time settles
    single_calls: int = 3  # the fewest timed batch-1 calls a block
    latency_images: int = 0  # 0: the whole test split, as the report
    protocol: str = "time"  # time: whole batches until min_time; report: every timed image once
    min_time: float = 0.2  # seconds each timed block covers at least (protocol time)
    repeat_check: bool = False  # measure everything twice and state how far the speed-ups moved
    accuracy_images: int = 0  # 0: the whole test split; else a class-balanced subset of this many
    # seconds idle before each variant's turn, so no thread pool still spins from the last: after 0.02 s an ONNX
    # Runtime session's spinning pool still slowed the next variant's first calls, so onnx-int8's speed-up depended
    # on the block length (quick profile: 3.0x with 0.03 s blocks, 4.2x with 0.3 s; with 0.05 s idle 3.95x)
    idle_gap: float = 0.05
    time_budget: float = 0.0  # seconds of timing a pass may take: more rounds while it lasts (0: exactly `rounds`)
    loads: int = 1  # each pass's rounds in this many parts, every variant loaded afresh (and warmed) for each part
    fresh_process: bool = False  # True: each part timed in a fresh process of its own (default: all in this one)

    def __post_init__(self):
        for name in ("batch_size", "rounds", "single_calls", "loads"):
            if getattr(self, name) <= 0:
                raise VggtoolError(f"{name.replace('_', '-')} must be positive")
        if min(self.threads, self.warmup, self.latency_images, self.min_time, self.accuracy_images,
               self.idle_gap, self.time_budget) < 0:
            raise VggtoolError("threads, warmup, latency images, accuracy images, min time, idle gap and time "
                               "budget must not be negative")
        if self.protocol not in PROTOCOLS:
            raise VggtoolError(f"unknown timing protocol {self.protocol!r}: choose one of {', '.join(PROTOCOLS)}")


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
        torch.set_num_threads(settings.threads)


def git_commit(where: Path | None = None) -> str:
    """The commit of vggtool's checkout (of `where`), with "-dirty" when a tracked file in the
    package's folder (`where`, and below) differs from it: a figure measured with modified code
    says so, while results written into the checkout do not. "unknown" outside a git checkout."""
    where = where or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=where).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if not commit:
            return "unknown"
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _peak_rss_mb() -> float:
    """The largest resident memory this process has used (a timing process: all its part's variants)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def environment(settings: BenchSettings) -> dict:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        **cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "affinity": ",".join(map(str, affinity)),
        **versions(),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
    }


def prepare(split: Split, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised batches made before any timing, so no tensor work runs between timed calls
    (torch's OpenMP threads would otherwise spin beside ONNX Runtime's and skew its figure)."""
    return list(batches(split, batch_size))


SETTLE_BLOCK, SETTLE_TOLERANCE = 3, 0.05


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


MAX_ROUNDS = 1000  # the most rounds a time budget buys


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


def balanced_subset(split: Split, n: int) -> Split:
    """The first n // classes test images of every class (all of them when n is 0 or
    covers the split), in their order in the split: a fixed, class-balanced sample
    (n rounded down to a multiple of the class count)."""
    if n <= 0 or n >= len(split):
        return split
    classes = split.labels.unique()
    if n < len(classes):
        raise VggtoolError(f"--accuracy-images {n} is below the {len(classes)} classes of the test split: score at "
                           "least one image of each")
    per_class = n // len(classes)
    keep = torch.cat([torch.nonzero(split.labels == c).flatten()[:per_class] for c in classes])
    return split.subset(keep.sort().values)


def labels(variant: Variant) -> tuple[str, str]:
    """The report's Method and Type columns for a variant's recipe (and its parents)."""
    method, kind = variant.recipe.label
    parents = [step["name"] for step in variant.meta.get("chain", [])[1:]]
    return (" + ".join(parents + [method]) if parents else method), kind


@dataclass
class _Entry:
    name: str
    variant: Variant | None
    error: str | None = None
    meta: dict | None = None


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
    """Every variant of a part loaded afresh and warmed (until its call time settles) in this
    process; `block` times one variant's turn of a round: its batch block, then its batch-1 block."""

    def __init__(self, folders: dict[str, Path], latency: Split, settings: BenchSettings,
                 on_load: Callable[[str], None] | None = None):
        self.settings, self.variants = settings, {}
        self.timed, self.singles = timing_inputs(latency, settings.batch_size, settings.protocol)
        self.min_time = settings.min_time if settings.protocol == "time" else 0.0
        for name, folder in folders.items():
            if on_load:
                on_load(name)
            self.variants[name] = variant = load_variant(folder, settings.threads)
            warm_up(variant.predict, [x for x, _ in self.timed], settings.warmup)
            warm_up(variant.predict, self.singles, settings.warmup)
        self.pid = os.getpid()

    def block(self, name: str, at: tuple[int, int]) -> tuple[Timing, list[float]]:
        """Each block goes on at `at` (batch, single image), where the variant's last one stopped."""
        predict, s = self.variants[name].predict, self.settings
        batch = batch_timing(predict, _rotated(self.timed, at[0]) if self.min_time > 0 else self.timed, 1,
                             self.min_time, gap=s.idle_gap)
        # no idle gap here: the same variant just ran, so no other library's threads still spin
        return batch, batch1_times(predict, _rotated(self.singles, at[1]), 1, s.single_calls, self.min_time)

    def close(self) -> float:
        """Drops the variants (before the next part's copies are made); the peak RSS in MB."""
        self.abandon()
        return _peak_rss_mb()

    def abandon(self) -> None:
        self.variants.clear()
        gc.collect()


def _serve(conn, folders: dict[str, Path], latency: tuple, settings: BenchSettings) -> None:
    """A timing process: loads the part's variants, then times the blocks asked for, one at a
    time; between them it waits, so the parent redraws only while nothing is timed."""
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends this process
    warnings.simplefilter("ignore")  # the parent showed any when it loaded the same variants to score them
    try:
        apply_settings(settings)
        split = Split(*(torch.from_numpy(a) for a in latency))
        timer = Timer(folders, split, settings, lambda name: conn.send(("loading", name)))
        conn.send(("ready", timer.pid))
        while (request := conn.recv()) is not None:
            conn.send(("timed", timer.block(*request)))
        conn.send(("closed", timer.close()))
    except (EOFError, BrokenPipeError):  # the parent is gone
        return
    except Exception as e:
        try:
            conn.send(("error", str(e) if isinstance(e, VggtoolError) else f"{type(e).__name__}: {e}"))
        except OSError:
            return


class ProcessTimer:
    """A Timer in a fresh spawned process (--loads parts each get their own): state a process
    keeps across loads, such as its allocator's and thread pools', then differs between parts
    and the interval over parts includes it. This process waits idle while a block is timed."""

    def __init__(self, folders: dict[str, Path], latency: Split, settings: BenchSettings,
                 on_load: Callable[[str], None] | None = None):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: only the environment and pinning carry over
        self.conn, child = context.Pipe()
        images = (latency.images.numpy(), latency.labels.numpy())  # plain bytes through the pipe: no shared memory
        self.process = context.Process(target=_serve, args=(child, folders, images, settings), daemon=True,
                                       name="vggtool-timing")
        self.process.start()
        child.close()
        try:
            while (reply := self._reply())[0] == "loading":
                if on_load:
                    on_load(reply[1])
        except BaseException:
            self.abandon()
            raise
        self.pid = reply[1]

    def _reply(self) -> tuple:
        try:
            kind, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise VggtoolError(f"the timing process ended unexpectedly (exit code {self.process.exitcode})") from None
        if kind == "error":
            raise VggtoolError(f"in the timing process: {value}")
        return kind, value

    def _send(self, request) -> None:
        try:
            self.conn.send(request)
        except OSError:  # it died between two requests
            self.process.join(5)
            raise VggtoolError(f"the timing process ended unexpectedly (exit code {self.process.exitcode})") from None

    def block(self, name: str, at: tuple[int, int]) -> tuple[Timing, list[float]]:
        self._send((name, at))
        return self._reply()[1]

    def close(self) -> float:
        """Ends the process once it has dropped its variants; its peak RSS in MB."""
        self._send(None)
        peak = self._reply()[1]
        self.process.join(10)
        self.abandon()
        return peak

    def abandon(self) -> None:
        """Ends the process now, whatever it is doing."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(10)
        self.conn.close()


def bench(
    variant_dirs: dict[str, Path],
    test: Split,
    settings: BenchSettings,
    on_progress: Callable[[str, float, int], None] | None = None,
    on_row: Callable[[dict], None] | None = None,
    baseline: str = "baseline",
) -> dict:
    """Measure every variant; returns {"environment", "settings", "rows"}.

    Accuracy is scored here; timing runs in `settings.loads` parts per pass, each with every
    variant loaded afresh, in a fresh process of its own (`fresh_process`) or in this one.
    `on_progress(message, step, steps)` follows the work (`step` is fractional while a
    variant is scored; during timing it is called only between blocks, never inside one,
    so a display that redraws only then cannot compete with the timed calls); `on_row(row)` is
    called when a row changes: after a variant's accuracy, and when complete.
    """
    if not variant_dirs:
        raise VggtoolError("no variants to measure: build them with `vggtool compress`")
    apply_settings(settings)
    entries = []
    for name, folder in variant_dirs.items():
        try:
            entries.append(_Entry(name, load_variant(folder, settings.threads)))
        except VggtoolError as e:
            entries.append(_Entry(name, None, str(e)))
        except Exception as e:  # a corrupt artifact must not stop the others
            entries.append(_Entry(name, None, f"{type(e).__name__}: {e}"))
    latency_split = test.subset(torch.arange(min(len(test), settings.latency_images or len(test))))
    accuracy_split = balanced_subset(test, settings.accuracy_images)
    scored = prepare(accuracy_split, settings.batch_size)
    step, steps = 0, len(entries) * (2 + settings.rounds)  # steps shrinks once failures are known

    def progress(message: str, part: float = 0.0) -> None:
        if on_progress:
            on_progress(message, step + part, steps)

    def changed(row: dict) -> None:
        if on_row:
            on_row(row)

    rows: dict[str, dict] = {}
    for e in entries:
        rows[e.name] = _base_row(e)
        if e.variant is not None:
            progress(f"accuracy: {e.name}")
            scored_images = [0]

            def scoring(images: int, name: str = e.name, done: list[int] = scored_images) -> None:
                done[0] += images
                progress(f"accuracy: {name}", done[0] / len(accuracy_split))

            try:
                acc = evaluate(e.variant.predict, scored, on_batch=scoring)
                rows[e.name].update(top1_err=acc.top1_err, top5_err=acc.top5_err, images_accuracy=acc.images)
            except Exception as exc:
                e.error = f"{type(exc).__name__}: {exc}"
                rows[e.name].update(status=f"failed: {e.error}")
            e.meta, e.variant = e.variant.meta, None  # timing loads its own copies
            gc.collect()
        step += 1
        changed(rows[e.name])
    live = [e for e in entries if e.meta is not None and e.error is None]
    folders = {e.name: variant_dirs[e.name] for e in live}
    passes = 2 if settings.repeat_check else 1
    planned = settings.rounds  # the first pass adds rounds while its time budget lasts; later ones repeat its count

    def total_steps() -> int:
        return len(entries) + len(live) + passes * planned * len(live)

    steps = total_steps()
    make = ProcessTimer if settings.fresh_process else Timer
    started_processes, peaks = [0], [_peak_rss_mb()]

    def start_part(label: str) -> Timer | ProcessTimer:
        def loading(name: str) -> None:
            progress(f"{label}: loading and warming {name}")

        timer = make(folders, latency_split, settings, loading)
        started_processes[0] += timer.pid != os.getpid()
        return timer

    # groups: the part (and pass) of each round, which the bootstrap resamples first; with one part a pass, the
    # rounds alone (two passes are too few parts for an interval over parts)
    measured, groups = [], []
    cursor = {e.name: [0, 0] for e in live}  # each block goes on where the variant's last one stopped
    for p in range(passes if live else 0):  # nothing to time when every variant failed
        batched: dict[str, list[Timing]] = {e.name: [] for e in live}
        b1: dict[str, list[list[float]]] = {e.name: [] for e in live}
        label = f"pass {p + 1}/{passes}, " if passes > 1 else ""
        started, r, part = time.perf_counter(), 0, 0  # the budget covers the parts' loading too
        timer = start_part(f"{label}part 1/{settings.loads}")
        if p == 0:
            step += len(live)
        try:  # Ctrl-C included: a timing process ends with this one
            while r < planned:
                for e in live:
                    progress(f"timing {label}round {r + 1}/{planned}: {e.name}")
                    batch, single = timer.block(e.name, tuple(cursor[e.name]))
                    cursor[e.name][0] += batch.calls  # (the untimed call repeats the block's first input)
                    cursor[e.name][1] += len(single)
                    batched[e.name].append(batch)
                    b1[e.name].append(single)
                    step += 1
                groups.append(p * settings.loads + part if settings.loads > 1 else 0)
                r += 1
                if p == 0:
                    planned = planned_rounds(settings.rounds, settings.time_budget, r, time.perf_counter() - started)
                    steps = total_steps()
                if load_part(part, r, planned, settings.loads) > part:
                    part = load_part(part, r, planned, settings.loads)
                    peaks.append(timer.close())  # the old copies go before the new ones are made
                    timer = start_part(f"{label}part {part + 1}/{settings.loads}")
            peaks.append(timer.close())
        except BaseException:
            timer.abandon()
            raise
        measured.append((batched, b1))
    batched = {e.name: [t for m in measured for t in m[0][e.name]] for e in live}  # every round of every pass
    b1 = {e.name: [t for m in measured for t in m[1][e.name]] for e in live}
    for e in live:
        per_round = batch_rounds(batched[e.name], settings.protocol)
        mid, lo, hi = bootstrap_center(per_round, groups=groups)
        centers = [statistics.median(r) for r in per_round]
        pooled = [t for round_times in b1[e.name] for t in round_times]
        rows[e.name].update(
            batch_ms=mid, batch_ms_lo=lo, batch_ms_hi=hi, batch_ms_min=min(centers), batch_ms_max=max(centers),
            b1_ms_median=statistics.median(pooled), b1_ms_p90=quantile(pooled, 0.9),
            b1_ms_iqr=quantile(pooled, 0.75) - quantile(pooled, 0.25),
            images_latency=len(latency_split), rounds=len(per_round),
            images_timed=round(statistics.mean(t.images for t in batched[e.name])),
            calls_timed=round(statistics.mean(t.calls for t in batched[e.name])),
            b1_calls=round(len(pooled) / len(per_round)),
        )
        if baseline in batched:  # speed-ups from rounds measured side by side: drift hits both sides alike
            rows[e.name].update(_speedups(batch_rounds(batched[baseline], settings.protocol), per_round,
                                          b1[baseline], b1[e.name], groups))
        changed(rows[e.name])
    spread = _repeat_spread(measured, baseline, settings.protocol) if passes > 1 and baseline in batched else None
    between = (_part_spread(batched, b1, baseline, groups, settings.protocol)
               if len(set(groups)) > 1 and baseline in batched else None)
    progress("done")
    env = {**environment(settings), "peak_rss_mb": max(peaks),
           "timing_processes": started_processes[0]}
    results = {"environment": env, "settings": {**asdict(settings), "cpus": list(settings.cpus),
                                                "estimator": estimator(settings.protocol, len(set(groups)) > 1)},
               "rows": list(rows.values()), **({"repeat_check": spread} if spread else {}),
               **({"parts": between} if between else {})}
    for scan in ("sensitivity", "layer_sensitivity", "finetune"):  # recorded at build time, shown beside the figures
        found = {e.name: e.meta["figures"][scan] for e in live if scan in e.meta.get("figures", {})}
        if found:
            results[scan] = found
    return results


def estimator(protocol: str, parts: bool = False) -> str:
    """How the figures were drawn from the timed calls, in words for the report."""
    center = ("median over every timed call of every round" if protocol == "time" else
              "median of the per-round figures (each round's time summed over its images)")
    over = "the parts, then the rounds within each part" if parts else "the rounds"
    return (f"{center}; speed-ups as ratios of those medians, with a {CONFIDENCE:.0%} paired bootstrap interval "
            f"over {over} ({BOOTSTRAP} resamples; none below {MIN_INTERVAL_ROUNDS} rounds)")


def batch_rounds(timings: list[Timing], protocol: str) -> list[list[float]]:
    """Per-round ms/image figures: every call's (protocol time), or the round's sum per image
    (protocol report: each round times every image once, as the report did)."""
    return [list(t.call_ms_per_image) if protocol == "time" else [t.ms_per_image] for t in timings]


def _speedups(base: list[list[float]], cand: list[list[float]], base1: list[list[float]],
              cand1: list[list[float]], groups: list[int] | None = None) -> dict:
    mid, lo, hi = bootstrap_ratio(base, cand, groups=groups)
    mid1, lo1, hi1 = bootstrap_ratio(base1, cand1, groups=groups)
    return {"batch_speedup": mid, "batch_speedup_lo": lo, "batch_speedup_hi": hi,
            "b1_speedup": mid1, "b1_speedup_lo": lo1, "b1_speedup_hi": hi1}


def _repeat_spread(measured: list, baseline: str, protocol: str = "time") -> dict:
    """The two passes' speed-ups side by side, and the largest relative difference between them."""

    per_variant = {}
    for name in measured[0][0]:
        a = [{"batch_speedup": speedup(batch_rounds(m[0][baseline], protocol), batch_rounds(m[0][name], protocol)),
              "b1_speedup": speedup(m[1][baseline], m[1][name])} for m in measured]
        per_variant[name] = {k: [a[0][k], a[1][k]] for k in ("batch_speedup", "b1_speedup")}
    return {"variants": per_variant,
            "batch_speedup_max_rel_diff": max(moved(v["batch_speedup"]) for v in per_variant.values()),
            "b1_speedup_max_rel_diff": max(moved(v["b1_speedup"]) for v in per_variant.values())}


def _part_spread(batched: dict, b1: dict, baseline: str, groups: list[int], protocol: str) -> dict:
    """Each part's own speed-ups and ms per image (its rounds alone), and the widest range of the speed-ups
    between parts relative to their mean: how far the figures moved within one bench (fresh loads; with
    fresh_process, fresh processes; and whatever else changed on the machine meanwhile)."""

    parts = list(dict.fromkeys(groups))

    def of(rounds: list, part: int) -> list:
        return [r for r, g in zip(rounds, groups) if g == part]

    def per_part(rounds: list) -> list[float]:
        return [pooled_median(of(rounds, g)) for g in parts]

    # each side's own ms per part (whether the variant or the baseline moved); a speed-up is their ratio, as speedup()
    ms = {name: (per_part(batch_rounds(batched[name], protocol)), per_part(b1[name])) for name in batched}
    base_batch, base_b1 = ms[baseline]
    per_variant = {name: {"batch_speedup": [b / c for b, c in zip(base_batch, batch)],
                          "b1_speedup": [b / c for b, c in zip(base_b1, one)],
                          "batch_ms": batch, "b1_ms": one}
                   for name, (batch, one) in ms.items()}
    return {"variants": per_variant, "baseline": baseline,
            "batch_speedup_max_range": max(spread(v["batch_speedup"]) for v in per_variant.values()),
            "b1_speedup_max_range": max(spread(v["b1_speedup"]) for v in per_variant.values())}


ROW_FIELDS = [
    "variant", "method", "type", "status", "top1_err", "top5_err", "batch_ms", "batch_ms_min", "batch_ms_max",
    "batch_speedup", "b1_ms_median", "b1_ms_p90", "b1_ms_iqr", "b1_speedup", "size_mb", "file_mb", "compressed_mb",
    "params", "nonzero_params", "sparsity_conv", "sparsity_all", "images_accuracy", "images_latency", "rounds",
    "macs", "arch_params", "batch_speedup_lo", "batch_speedup_hi", "b1_speedup_lo", "b1_speedup_hi", "images_timed",
    "calls_timed", "b1_calls", "state_dict_mb", "dense_zlib_mb", "batch_ms_lo", "batch_ms_hi", "engine",
]


def _base_row(e: _Entry) -> dict:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(variant=e.name, status="ok" if e.variant else f"failed: {e.error}")
    if e.variant is not None:
        meta = e.variant.meta
        f = meta.get("figures", {})
        method, kind = labels(e.variant)
        row.update(method=method, type=kind, size_mb=f.get("size_mb"), file_mb=f.get("file_bytes", 0) / 1e6,
                   compressed_mb=f.get("compressed_bytes", 0) / 1e6, params=f.get("float_params"),
                   nonzero_params=f.get("nonzero_float_params"), sparsity_conv=f.get("sparsity_conv"),
                   sparsity_all=f.get("sparsity_conv_linear"), macs=macs(e.variant.spec),
                   arch_params=param_count(e.variant.spec), state_dict_mb=f.get("state_dict_mb"),
                   dense_zlib_mb=f["dense_zlib_bytes"] / 1e6 if "dense_zlib_bytes" in f else None,
                   engine=meta.get("recipe", {}).get("params", {}).get("engine"))  # torch int8: what it was packed for
    return row


def bench_run(run, data_dir: Path, names: list[str], settings: BenchSettings,
              on_progress: Callable[[str, float, int], None] | None = None,
              on_row: Callable[[dict], None] | None = None) -> dict:
    """Measure a run's variants (all by default); returns the results, the run described as their subject."""
    from vggtool.data import is_synthetic, load_split

    names = list(names) or run.variant_names()
    if not names:
        raise VggtoolError(f"no variants to measure in {run.variants_dir}: build them with `vggtool compress`")

    started = time.perf_counter()
    test = Split(*load_split(data_dir, "test"))
    results = bench({n: run.variants_dir / n for n in names}, test, settings, on_progress, on_row)
    # the whole measurement (data, loads, scoring, timing), so "under N minutes" is the tool's own figure
    results["environment"]["bench_seconds"] = round(time.perf_counter() - started, 1)
    results["subject"] = {**describe(run), "data": "synthetic stand-in" if is_synthetic(data_dir) else "CIFAR-100",
                          "test_images": len(test)}
    return results


def describe(run) -> dict:
    """What the run's baseline is: its architecture (from the checkpoint), and the epochs it was trained for
    here, or the file it was imported from (an imported run has no training config of its own)."""
    from vggtool import checkpoint
    from vggtool.runs import CONFIG

    about = {"run": run.path.name}
    meta = checkpoint.read(run.baseline)[1] if run.baseline.exists() else {}
    cfg = run.config()
    spec = meta.get("spec", {})
    about.update(arch=spec.get("arch", cfg.arch), width=spec.get("width", cfg.width))
    if meta.get("imported_from"):
        about.update(imported_from=Path(meta["imported_from"]).name, epochs=None)
    else:
        about.update(epochs=cfg.epochs if (run.path / CONFIG).exists() else None)
    return about
