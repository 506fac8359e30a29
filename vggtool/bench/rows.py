"""A bench's rows: one flat dict per variant, its figures from the variant's meta.json,
its accuracy, and its timing summarised against the baseline's rounds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from vggtool.bench.stats import bootstrap_center, bootstrap_ratio, pooled_median, quantile, spread
from vggtool.bench.timing import Timing, batch_rounds
from vggtool.compress import Variant
from vggtool.models import macs, param_count
from vggtool.runtimes import describe

ROW_FIELDS = [
    "variant", "method", "type", "status", "top1_err", "top5_err", "batch_ms", "batch_ms_min", "batch_ms_max",
    "batch_speedup", "b1_ms_median", "b1_ms_p90", "b1_ms_iqr", "b1_speedup", "size_mb", "file_mb", "compressed_mb",
    "params", "nonzero_params", "sparsity_conv", "sparsity_all", "images_accuracy", "images_latency", "rounds",
    "macs", "arch_params", "batch_speedup_lo", "batch_speedup_hi", "b1_speedup_lo", "b1_speedup_hi", "images_timed",
    "calls_timed", "b1_calls", "state_dict_mb", "dense_zlib_mb", "batch_ms_lo", "batch_ms_hi", "engine", "label",
    "runtime", "compute_precision", "runtime_settings",
]


@dataclass
class Entry:
    """A variant in a runtime on its way through the bench: loaded to be scored, then only its meta.json.
    `name` is the row's key (vggtool.runtimes.key); `runtime` None is the variant's own."""

    name: str
    variant: Variant | None
    error: str | None = None
    meta: dict | None = None
    folder: Path | None = None
    runtime: str | None = None


def labels(variant: Variant) -> tuple[str, str]:
    """The report's Method and Type columns for a variant's recipe (and its parents)."""
    method, kind = variant.recipe.label
    parents = [step["name"] for step in variant.meta.get("chain", [])[1:]]
    return (" + ".join(parents + [method]) if parents else method), kind


def base_row(e: Entry, label: str) -> dict:
    """What the variant says of itself: its labels (`label` the short one for tables and plots) and the
    figures measured when it was built."""
    row = dict.fromkeys(ROW_FIELDS)
    row.update(variant=e.name, label=label, status="ok" if e.variant else f"failed: {e.error}", runtime=e.runtime)
    if e.variant is not None:
        meta, settings = e.variant.meta, e.variant.settings or {}
        row.update(runtime=e.variant.runtime, compute_precision=settings.get("compute_precision"),
                   runtime_settings=describe(settings) if settings else None)
        f = meta.get("figures", {})
        method, kind = labels(e.variant)
        row.update(method=method, type=kind, size_mb=f.get("size_mb"), file_mb=f.get("file_bytes", 0) / 1e6,
                   compressed_mb=f.get("compressed_bytes", 0) / 1e6, params=f.get("float_params"),
                   nonzero_params=f.get("nonzero_float_params"), sparsity_conv=f.get("sparsity_conv"),
                   sparsity_all=f.get("sparsity_conv_linear"), macs=macs(e.variant.spec),
                   arch_params=param_count(e.variant.spec), state_dict_mb=f.get("state_dict_mb"),
                   dense_zlib_mb=f["dense_zlib_bytes"] / 1e6 if "dense_zlib_bytes" in f else None,
                   # torch int8: the engine its weights were packed for (--engine auto: the one it measured faster)
                   engine=f.get("engine", {}).get("chosen") or meta.get("recipe", {}).get("params", {}).get("engine"))
    return row


def timing_figures(batched: list[Timing], b1: list[list[float]], protocol: str, groups: list[int],
                   images_latency: int) -> dict:
    """A variant's ms per image at the batch size (with its interval over parts and rounds) and at batch 1."""
    per_round = batch_rounds(batched, protocol)
    mid, lo, hi = bootstrap_center(per_round, groups=groups)
    centers = [statistics.median(r) for r in per_round]
    pooled = [t for round_times in b1 for t in round_times]
    return dict(
        batch_ms=mid, batch_ms_lo=lo, batch_ms_hi=hi, batch_ms_min=min(centers), batch_ms_max=max(centers),
        b1_ms_median=statistics.median(pooled), b1_ms_p90=quantile(pooled, 0.9),
        b1_ms_iqr=quantile(pooled, 0.75) - quantile(pooled, 0.25),
        images_latency=images_latency, rounds=len(per_round),
        images_timed=round(statistics.mean(t.images for t in batched)),
        calls_timed=round(statistics.mean(t.calls for t in batched)),
        b1_calls=round(len(pooled) / len(per_round)),
    )


def speedups(base: list[list[float]], cand: list[list[float]], base1: list[list[float]],
             cand1: list[list[float]], groups: list[int] | None = None) -> dict:
    """Speed-ups from rounds measured side by side (drift hits both sides alike), with paired intervals."""
    mid, lo, hi = bootstrap_ratio(base, cand, groups=groups)
    mid1, lo1, hi1 = bootstrap_ratio(base1, cand1, groups=groups)
    return {"batch_speedup": mid, "batch_speedup_lo": lo, "batch_speedup_hi": hi,
            "b1_speedup": mid1, "b1_speedup_lo": lo1, "b1_speedup_hi": hi1}


def part_spread(batched: dict, b1: dict, baseline: str, groups: list[int], protocol: str) -> dict:
    """Each part's own speed-ups and ms per image (its rounds alone), and the widest range of the speed-ups
    between parts relative to their mean: how far the figures moved within one bench (fresh loads, and
    whatever else changed on the machine meanwhile)."""

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
