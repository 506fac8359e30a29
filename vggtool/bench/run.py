"""The bench in three named steps: score every variant's error, time them all side by
side in interleaved rounds, summarise the rounds into rows with intervals.

Timing runs in `settings.loads` parts, each loading every variant afresh; within a part
each round gives every variant a short turn, round robin, after an idle gap, so drift
over minutes hits all alike and every speed-up pairs rounds measured side by side.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vggtool import runtimes as rt
from vggtool.bench.env import environment, peak_rss_mb
from vggtool.bench.rows import Entry, base_row, part_spread, speedups, timing_figures
from vggtool.bench.settings import BenchSettings, apply_settings
from vggtool.bench.stats import estimator
from vggtool.bench.timing import Timer, Timing, batch_rounds, load_part, planned_rounds, prepare
from vggtool.compress import display_labels, load_variant, read_meta
from vggtool.data import Split
from vggtool.errors import VggtoolError
from vggtool.evaluate import evaluate

OnProgress = Callable[[str, float, int], None]
OnRow = Callable[[dict], None]


class Progress:
    """Steps done out of steps planned, reported as `on_progress(message, step, steps)`; `steps`
    is re-planned as failures become known and the time budget grows the rounds."""

    def __init__(self, on_progress: OnProgress | None, entries: int, rounds: int):
        self.on_progress, self.entries, self.step, self.steps = on_progress, entries, 0, entries * (2 + rounds)

    def __call__(self, message: str, part: float = 0.0) -> None:
        if self.on_progress:
            self.on_progress(message, self.step + part, self.steps)


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


def load_entries(variant_dirs: dict[str, Path], threads: int,
                 runtimes: tuple[str, ...] = ("onnxruntime",)) -> tuple[list[Entry], dict[str, str]]:
    """Each variant loaded in each runtime of `runtimes` it runs in (its own where none), one Entry per row;
    and the rows skipped, with the reason (a torch model asked for in OpenVINO)."""
    entries, skipped = [], {}
    for name, folder in variant_dirs.items():
        try:
            output = read_meta(folder)[1].output.value
        except Exception:  # a folder that cannot be read fails below, in its own row
            output = None
        rows, skip = rt.plan(output, runtimes, name) if output else ({name: None}, {})
        skipped.update(skip)
        for key, runtime in rows.items():
            try:
                entries.append(Entry(key, load_variant(folder, threads, runtime), folder=folder, runtime=runtime))
            except VggtoolError as e:
                entries.append(Entry(key, None, str(e), folder=folder, runtime=runtime))
            except Exception as e:  # a corrupt artifact must not stop the others
                entries.append(Entry(key, None, f"{type(e).__name__}: {e}", folder=folder, runtime=runtime))
    return entries, skipped


def score(entries: list[Entry], accuracy: Split, batch_size: int, progress: Progress,
          on_row: OnRow | None = None) -> dict[str, dict]:
    """Step 1: each variant's row, with its top-1/top-5 error from the project's one `evaluate`.
    A variant that fails is marked so and not timed; the others are dropped once scored (timing
    loads its own copies), keeping only their meta.json."""
    scored = prepare(accuracy, batch_size)
    labels = display_labels(rt.variant_of(e.name) for e in entries)  # unique within this bench
    rows: dict[str, dict] = {}
    for e in entries:
        output = e.variant.recipe.output.value if e.variant else None
        rows[e.name] = base_row(e, rt.label(labels[rt.variant_of(e.name)], e.runtime, output))
        if e.variant is not None:
            done = [0]

            def scoring(images: int, name: str = e.name, done: list[int] = done) -> None:
                done[0] += images
                progress(f"accuracy: {name}", done[0] / len(accuracy))

            progress(f"accuracy: {e.name}")
            try:
                acc = evaluate(e.variant.predict, scored, on_batch=scoring)
                rows[e.name].update(top1_err=acc.top1_err, top5_err=acc.top5_err, images_accuracy=acc.images)
            except Exception as exc:
                e.error = f"{type(exc).__name__}: {exc}"
                rows[e.name].update(status=f"failed: {e.error}")
            e.meta, e.variant = e.variant.meta, None
            gc.collect()
        progress.step += 1
        if on_row:
            on_row(rows[e.name])
    return rows


@dataclass
class Timed:
    """Every round's timing of every variant, the part each round was in, the peak memory of each part."""

    batched: dict[str, list[Timing]]
    b1: dict[str, list[list[float]]]
    groups: list[int] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)


def time_variants(folders: dict[str, tuple[Path, str | None]], latency: Split, settings: BenchSettings,
                  progress: Progress) -> Timed:
    """Step 2: interleaved rounds of every row's variant (`folders`: key -> its folder and runtime), as many as
    the time budget allows (at least `settings.rounds`), in `settings.loads` parts that each load and warm every
    variant afresh. The budget covers the parts' loading too. Progress is reported only between blocks, never inside one."""
    names = list(folders)
    timed = Timed({n: [] for n in names}, {n: [] for n in names}, peaks=[peak_rss_mb()])
    if not names:  # nothing to time when every variant failed
        return timed
    planned = settings.rounds

    def start_part(part: int) -> Timer:
        return Timer(folders, latency, settings,
                     lambda name: progress(f"part {part + 1}/{settings.loads}: loading and warming {name}"))

    progress.steps = progress.entries + len(names) + planned * len(names)
    started, r, part = time.perf_counter(), 0, 0
    cursor = {n: [0, 0] for n in names}  # each block goes on where the variant's last one stopped
    timer = start_part(part)
    progress.step += len(names)
    try:
        while r < planned:
            for name in names:
                progress(f"timing round {r + 1}/{planned}: {name}")
                batch, single = timer.block(name, tuple(cursor[name]))
                cursor[name][0] += batch.calls  # (the untimed call repeats the block's first input)
                cursor[name][1] += len(single)
                timed.batched[name].append(batch)
                timed.b1[name].append(single)
                progress.step += 1
            # the part of each round, which the bootstrap resamples first (one part: the rounds alone)
            timed.groups.append(part if settings.loads > 1 else 0)
            r += 1
            planned = planned_rounds(settings.rounds, settings.time_budget, r, time.perf_counter() - started)
            progress.steps = progress.entries + len(names) + planned * len(names)
            if load_part(part, r, planned, settings.loads) > part:
                part = load_part(part, r, planned, settings.loads)
                timed.peaks.append(timer.close())  # the old copies go before the new ones are made
                timer = start_part(part)
    finally:
        timed.peaks.append(timer.close())
    return timed


def summarise(rows: dict[str, dict], timed: Timed, settings: BenchSettings, images_latency: int,
              baseline: str = "baseline", on_row: OnRow | None = None) -> dict:
    """Step 3: each timed row's figures and its speed-ups over the baseline's rounds; the spread between parts."""
    protocol, groups = settings.protocol, timed.groups
    for name in timed.batched:
        rows[name].update(timing_figures(timed.batched[name], timed.b1[name], protocol, groups, images_latency))
        if baseline in timed.batched:
            rows[name].update(speedups(batch_rounds(timed.batched[baseline], protocol),
                                       batch_rounds(timed.batched[name], protocol),
                                       timed.b1[baseline], timed.b1[name], groups))
        if on_row:
            on_row(rows[name])
    parts = len(set(groups)) > 1
    results = {"environment": {**environment(), "peak_rss_mb": max(timed.peaks)},
               "settings": {**asdict(settings), "cpus": list(settings.cpus), "estimator": estimator(protocol, parts)},
               "rows": list(rows.values())}
    if parts and baseline in timed.batched:
        results["parts"] = part_spread(timed.batched, timed.b1, baseline, groups, protocol)
    return results


def bench(variant_dirs: dict[str, Path], test: Split, settings: BenchSettings, on_progress: OnProgress | None = None,
          on_row: OnRow | None = None, baseline: str = "baseline") -> dict:
    """Measure every variant; returns {"environment", "settings", "rows"} (and "parts", and the
    scans each variant recorded when it was built). `on_row(row)` is called when a row changes:
    after its accuracy, and when complete."""
    if not variant_dirs:
        raise VggtoolError("no variants to measure: build them with `vggtool compress`")
    apply_settings(settings)
    runtimes = rt.expand(settings.runtime)
    rt.check(runtimes)
    entries, skipped = load_entries(variant_dirs, settings.threads, runtimes)
    progress = Progress(on_progress, len(entries), settings.rounds)
    rows = score(entries, balanced_subset(test, settings.accuracy_images), settings.batch_size, progress, on_row)
    live = [e for e in entries if e.meta is not None and e.error is None]
    latency = test.subset(torch.arange(min(len(test), settings.latency_images or len(test))))
    timed = time_variants({e.name: (e.folder, e.runtime) for e in live}, latency, settings, progress)
    progress("done")
    results = summarise(rows, timed, settings, len(latency), baseline, on_row)
    if any(r in rt.OPENVINO for r in runtimes):
        from vggtool.openvino_runtime import version

        results["environment"]["openvino"] = version()
    if skipped:
        results["skipped"] = skipped
    kept = {e.name: e.meta["figures"].get("float_layers", e.meta["figures"].get("float_nodes")) for e in live
            if e.name == rt.variant_of(e.name)}  # int8 files: the layers NNCF's accuracy control or --exclude kept float
    if any(kept.values()):  # shown where some variant kept any, beside those that kept none
        results["float_layers"] = {k: v for k, v in kept.items() if v is not None}
    for scan in ("sensitivity", "layer_sensitivity", "finetune", "engine"):  # recorded at build time, shown beside the figures
        found = {e.name: e.meta["figures"][scan] for e in live if scan in e.meta.get("figures", {})
                 and e.name == rt.variant_of(e.name)}  # once per variant, not per runtime
        if found:
            results[scan] = found
    return results


def bench_run(run, data_dir: Path, names: list[str], settings: BenchSettings, on_progress: OnProgress | None = None,
              on_row: OnRow | None = None, sets: tuple[str, ...] = ()) -> dict:
    """Measure a run's variants (all by default; the members of `sets` too; "search" names what the run's search
    chose and the first it found within budget); returns the results, the run described as their subject, and
    the search's summary where the run has one."""
    from vggtool.compress import selection
    from vggtool.data import is_synthetic, load_split
    from vggtool.search import searched

    found = searched(run)
    if "search" in names and not (found and found["variants"]):
        raise VggtoolError(f"no search in {run.path} chose a variant" + ("" if found else ": run `vggtool search` first"))
    names = [n for name in names for n in (found["variants"] if name == "search" else [name])]
    missing = [n for n in names if not (run.variants_dir / n).is_dir()]
    if missing:
        raise VggtoolError(f"no variant {missing[0]!r} in {run.variants_dir}: build it with `vggtool compress`")
    # a set's members not built here (a recipe this stack cannot build) are left out, and said so
    unbuilt = [n for n in selection((), tuple(sets)) if not (run.variants_dir / n).is_dir()] if sets else []
    names = [n for n in (selection(tuple(names), tuple(sets)) if sets else names) if n not in unbuilt]
    names = names or run.variant_names()
    if not names:
        raise VggtoolError(f"no variants to measure in {run.variants_dir}: build them with `vggtool compress`")
    started = time.perf_counter()
    test = Split(*load_split(data_dir, "test"))
    results = bench({n: run.variants_dir / n for n in names}, test, settings, on_progress, on_row)
    # the whole measurement (data, loads, scoring, timing), so "under N minutes" is the tool's own figure
    results["environment"]["bench_seconds"] = round(time.perf_counter() - started, 1)
    results["subject"] = {**describe(run), "data": "synthetic stand-in" if is_synthetic(data_dir) else "CIFAR-100",
                          "test_images": len(test)}
    if found:
        results["search"] = found["summary"]
    if unbuilt:
        results.setdefault("skipped", {}).update({n: "not built in this run" for n in unbuilt})
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
