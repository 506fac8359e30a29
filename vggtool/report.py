"""Views of result rows: console tables, REPORT.md and plots. Nothing here measures.

`results.json` ({"environment", "settings", "rows"}) is the single source;
`results.csv`, `REPORT.md` and the PNG plots are rendered from it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from itertools import product
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vggtool.bench.stats import moved, spread
from vggtool.errors import VggtoolError
from vggtool.files import remove_stale_temporaries, write_bytes, write_json, write_text

RESULTS_JSON, RESULTS_CSV, REPORT_MD = "results.json", "results.csv", "REPORT.md"
PLOT_TRADEOFF, PLOT_SIZE = "error_vs_latency.png", "size.png"

# The published table of the seed report (seed-report.md), shown beside our measurements.
PUBLISHED = {
    "baseline": (0.323, 0.119, 21.05, 157.38),
    "dynamic-fp16": (0.323, 0.119, 20.80, 157.38),
    "dynamic-int8": (0.323, 0.119, 20.23, 99.53),
    "static-int8": (0.326, 0.122, 10.19, 39.72),
    "static-int8-fused": (0.324, 0.120, 10.51, 39.60),
    "prune-global-0.6": (0.363, 0.142, 22.44, 157.38),
    "prune-local-0.6": (0.492, 0.233, 21.30, 157.38),
    "onnx-fp32": (0.323, 0.119, 17.32, 157.47),
}
REPORT_ORDER = list(PUBLISHED)

# Rows written before the batch size was an option named the batched figures after the default batch of 16.
RENAMED = {"b16_ms": "batch_ms", "b16_ms_min": "batch_ms_min", "b16_ms_max": "batch_ms_max",
           "b16_speedup": "batch_speedup"}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def variant_figure_rows(metas: dict[str, dict]):
    """Columns, rows and right-justification for the figures known at build time."""
    columns = ["variant", "size MB", "file MB", "zlib MB", "zeros conv", "zeros all", "ONNX |d| / agree"]
    rows = []
    for name, meta in metas.items():
        f = meta["figures"]
        parity = f.get("parity")
        rows.append([
            name,
            _fmt(f.get("size_mb"), ".2f"),
            _fmt(f["file_bytes"] / 1e6, ".2f"),
            _fmt(f["compressed_bytes"] / 1e6, ".2f"),
            _fmt(f.get("sparsity_conv"), ".4f"),
            _fmt(f.get("sparsity_conv_linear"), ".4f"),
            f"{parity['max_abs_logit_diff']:.1e} / {parity['top1_agreement']:.4f}" if parity else "-",
        ])
    return columns, rows, [False] + [True] * 5 + [False]


# ---------------------------------------------------------------- results files
def upgrade(results: dict) -> dict:
    """`results` with its rows in the current field names, so files from older versions keep rendering."""
    return {**results, "rows": [{RENAMED.get(k, k): v for k, v in row.items()} for row in results["rows"]]}


def save_results(results: dict, folder: Path) -> list[Path]:
    """results.json and results.csv, each written atomically; returns their paths."""
    folder = Path(folder)
    results = upgrade(results)
    write_json(folder / RESULTS_JSON, results)
    buf = io.StringIO()
    env = results["environment"]
    writer = csv.DictWriter(buf, fieldnames=list(results["rows"][0]) + ["cpu_model", "torch", "onnxruntime", "date"])
    writer.writeheader()
    for row in results["rows"]:
        writer.writerow({**row, "cpu_model": env.get("cpu_model"), "torch": env.get("torch"),
                         "onnxruntime": env.get("onnxruntime"), "date": env.get("date")})
    write_text(folder / RESULTS_CSV, buf.getvalue())
    return [folder / RESULTS_JSON, folder / RESULTS_CSV]


def load_results(folder: Path) -> dict:
    path = Path(folder) / RESULTS_JSON
    if not path.exists():
        raise VggtoolError(f"no {RESULTS_JSON} in {folder}: run `vggtool bench` first")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VggtoolError(f"{path} cannot be parsed ({type(e).__name__}: {e}); it was left untouched") from None
    problem = _shape_problem(results)
    if problem:
        raise VggtoolError(f"{path} cannot be parsed ({problem}); it was left untouched")
    return upgrade(results)


def _shape_problem(results) -> str | None:
    if not isinstance(results, dict):
        return "not a JSON object"
    if not isinstance(results.get("rows"), list) or not all(isinstance(r, dict) for r in results["rows"]):
        return '"rows" is not a list of objects'
    for key in ("environment", "settings"):
        if not isinstance(results.get(key), dict):
            return f'"{key}" is not an object'
    return None


def check_writable(folder: Path) -> None:
    """Refuse to replace a results.json that cannot be parsed: it may be someone's only copy."""
    if (Path(folder) / RESULTS_JSON).exists():
        load_results(folder)


def ordered(rows: list[dict]) -> list[dict]:
    rank = {name: i for i, name in enumerate(REPORT_ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r["variant"], len(rank)), r["variant"]))


def _rows(results: dict) -> list[dict]:
    """The rows every view shows: current field names, the report's order."""
    return ordered(upgrade(results)["rows"])


# ---------------------------------------------------------------- console
def console_table(results: dict) -> Table:
    """The figures a reader looks for first, at most 100 columns wide: every figure column keeps its whole
    width (no_wrap); long variant names and failure messages fold instead, so a narrow terminal or a log (make,
    CI, docker) still shows every number. Intervals, top-5 and p90 are in REPORT.md."""
    size = results["settings"]["batch_size"]
    t = Table(title=f"vggtool bench: error, ms/image at batch {size} and 1 (x = speed-up over baseline), size",
              caption="b1 ms: the median of the batch-1 calls; intervals, top-5 and p90 in REPORT.md")
    columns = ["variant", "top-1", f"b{size} ms", f"b{size} x", "b1 ms", "b1 x", "MB", "status"]
    cells = [[r["variant"], _fmt(r["top1_err"], ".4f"), _fmt(r["batch_ms"], ".2f"), _fmt(r.get("batch_speedup"), ".2f"),
              _fmt(r["b1_ms_median"], ".2f"), _fmt(r.get("b1_speedup"), ".2f"), _fmt(r["size_mb"], ".2f"),
              r["status"]] for r in _rows(results)]
    for i, c in enumerate(columns):
        widest = max([len(c)] + [len(row[i]) for row in cells])
        if c in ("variant", "status"):
            limit = 26 if c == "variant" else 16  # longer text folds (rich measures a name as one word): 100 columns
            t.add_column(c, justify="left", overflow="fold", min_width=min(widest, limit), max_width=limit)
        else:
            t.add_column(c, justify="right", no_wrap=True, min_width=widest)
    for row in cells:
        t.add_row(*row)
    return t


def _speedup(row: dict, kind: str, unit: str = "") -> str:
    """A speed-up with its interval over the rounds, when the results have one (older ones do not)."""
    mid, lo, hi = row.get(f"{kind}_speedup"), row.get(f"{kind}_speedup_lo"), row.get(f"{kind}_speedup_hi")
    text = _fmt(mid, ".2f") + (unit if mid is not None or unit else "")
    return text if lo is None or hi is None else f"{text} [{lo:.2f}-{hi:.2f}]"


def render_console(results: dict, width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(console_table(results))
    return console.file.getvalue()


# ---------------------------------------------------------------- markdown
def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    env, settings = results["environment"], results["settings"]
    batch = f"b{settings['batch_size']}"
    rows = _rows(results)
    ok = [r for r in rows if r["status"] == "ok"]
    main = _md_table(
        ["Method", "Type", "Top1err", "Top5err", "Runtime (ms)", "Model size (MB)"],
        [[r["method"], r["type"], _fmt(r["top1_err"], ".3f"), _fmt(r["top5_err"], ".3f"), _fmt(r["batch_ms"], ".2f"),
          _fmt(r["size_mb"], ".2f")] for r in ok],
        ["-", "-", ":-:", ":-:", ":-:", ":-:"],
    )
    lo, hi, span = ("batch_ms_lo", "batch_ms_hi", "95% interval") if any(r.get("batch_ms_lo") is not None
                                                                         for r in ok) else (
        "batch_ms_min", "batch_ms_max", "min-max")
    latency = _md_table(
        ["Variant", f"ms/image {batch} ({span})", f"Speed-up {batch}", "Batch-1 median ms", "p90", "IQR",
         "Speed-up b1", "File MB", "zlib MB", "Sparsity conv / all"],
        [[r["variant"], f"{_fmt(r['batch_ms'], '.2f')} ({_fmt(r[lo], '.2f')}-{_fmt(r[hi], '.2f')})",
          _speedup(r, "batch", "x"), _fmt(r["b1_ms_median"], ".2f"), _fmt(r["b1_ms_p90"], ".2f"),
          _fmt(r["b1_ms_iqr"], ".2f"), _speedup(r, "b1", "x"), _fmt(r["file_mb"], ".2f"),
          _fmt(r["compressed_mb"], ".2f"), f"{_fmt(r['sparsity_conv'], '.3f')} / {_fmt(r['sparsity_all'], '.3f')}"]
         for r in ok],
        ["-"] + [":-:"] * 9,
    )
    base = next((r for r in ok if r["variant"] == "baseline"), None)
    side = _md_table(
        ["Variant", "Top1err ours / published", "Top5err ours / published", "Top-1 change from baseline, points: "
         "ours / published", "Runtime ms ours / published", "Size MB ours / published"],
        [[r["variant"]] + [f"{_fmt(r[k], spec)} / {_fmt(p, spec)}" for k, spec, p in zip(
            ("top1_err", "top5_err"), (".3f", ".3f"), PUBLISHED[r["variant"]])]
         + [f"{_points(r, base)} / {100 * (PUBLISHED[r['variant']][0] - PUBLISHED['baseline'][0]):+.1f}"]
         + [f"{_fmt(r[k], spec)} / {_fmt(p, spec)}" for k, spec, p in zip(
            ("batch_ms", "size_mb"), (".2f", ".2f"), PUBLISHED[r["variant"]][2:])]
         for r in ok if r["variant"] in PUBLISHED],
        ["-"] + [":-:"] * 5,
    )
    failed = [f"- `{r['variant']}`: {r['status']}" for r in rows if r["status"] != "ok"]
    env_lines = [f"- {k}: `{v}`" for k, v in env.items()]
    set_lines = [f"- {k}: `{v}`" for k, v in settings.items()]
    images = ok[0]["images_accuracy"] if ok else 0
    lat_images = ok[0]["images_latency"] if ok else 0
    subject = results.get("subject")
    about = (f"Model: `{subject['arch']}` at width {subject['width']}, " + (
        f"imported from `{subject['imported_from']}`" if subject.get("imported_from") else
        f"trained {subject['epochs']} epochs" if subject.get("epochs") else "trained elsewhere")
        + f" (run `{subject['run']}`); data: {subject['data']} test split, {subject['test_images']} images. "
        if subject else "")
    parts = [
        "# VGG compression report",
        about + f"Measured by `vggtool bench` on {env.get('date', '?')}; rendered by `vggtool report` from "
        "results.json. No figure here is typed by hand.",
        *_summary(ok, settings["batch_size"], env),
        "## Results (the report's table)",
        f"Errors over {images} test images"
        + (f", a class-balanced subset of the {subject['test_images']} (`--accuracy-images`: the first images of "
           "every class; without it every test image is scored)" if settings.get("accuracy_images") and subject
           and images < subject["test_images"] else "") + ". " + _protocol(settings, ok, lat_images)
        + " Size is `torch.save(state_dict)` in MB (ONNX and coded variants: the stored file).",
        main,
        "## Latency and speed-up",
        (f"Speed-ups are over `baseline`, in brackets their interval: {settings['estimator']}" if settings.get("estimator") else
         "Speed-ups are over `baseline`, computed round by round and then the median taken"
         + (" (in brackets: the lowest and highest per-round ratio)" if any(r.get("batch_speedup_lo") for r in ok)
            else "")) + ". Batch-1: " + _batch1_protocol(settings) + ".",
        latency,
        "## Beside the published report",
        "The published figures come from a T4 machine's Xeon CPU and the official CIFAR-100 split; ours from the "
        "environment below.",
        side,
    ]
    parts += (_architecture(ok, batch) + _stored_size(ok) + _spread(results.get("repeat_check"))
              + _between_parts(results.get("parts"))
              + _finetuning(results.get("finetune", {}), ok)
              + _sensitivity(results.get("sensitivity", {}))
              + _layer_sensitivity(results.get("layer_sensitivity", {})))
    if failed:
        parts += ["## Variants that failed", "\n".join(failed)]
    parts += ["## Environment", "\n".join(env_lines), "## Settings", "\n".join(set_lines)]
    return "\n\n".join(parts) + "\n"


def _protocol(settings: dict, ok: list[dict], lat_images: int) -> str:
    pooled = max([r.get("rounds") or 0 for r in ok] + [settings["rounds"]])  # --repeat-check pools two passes
    if not settings.get("estimator"):
        rounds = f"median of {settings['rounds']} interleaved rounds"
    else:
        center = "median" if settings.get("protocol") == "report" else "median over every call"
        where = "each variant's turn" if "time_budget" in settings else "each block"
        budget = (f" (as many as a {settings['time_budget']:g} s budget allowed, at least {settings['rounds']})"
                  if settings.get("time_budget") else "")
        loads = (f"; every variant loaded afresh for each of {settings['loads']} parts of a pass"
                 + (", each part timed in a fresh process" if settings.get("fresh_process") else "")
                 if settings.get("loads", 1) > 1 else "")
        rounds = f"{center} of {pooled} interleaved rounds{budget}, {settings.get('idle_gap', 0):g} s idle before " \
                 f"{where}{loads}"
    if settings.get("protocol", "report") == "report":  # results from before 0.2 all used it
        return (f"Runtime is the report's protocol: batches of {settings['batch_size']}, time inside the model call "
                f"summed over {lat_images} images, per image ({rounds}).")
    timed = [r["images_timed"] for r in ok if r.get("images_timed")]
    return (f"Runtime: time inside the model call over whole batches of {settings['batch_size']}, cycled through "
            f"{lat_images} test images (whole batches only; each block goes on where the last one stopped) until "
            f"at least {settings['min_time']:g} s were timed per block "
            f"({min(timed) if timed else '?'} to {max(timed) if timed else '?'} images per "
            f"{'block' if settings.get('estimator') else 'round'}), per image "
            f"({rounds}); `vggtool bench --protocol report` times every image once, as the report did.")


def _batch1_protocol(settings: dict) -> str:
    warm = f"up to {settings['warmup']} warm-up calls, stopping once the call time settles" + (
        f" (once per variant{' and part' if settings.get('loads', 1) > 1 else ''}; each block then starts with one "
        "untimed call)" if settings.get("estimator") else "")
    if settings.get("protocol", "report") == "report":
        warm = f"{settings['warmup']} warm-up calls" if "min_time" not in settings else warm
        return f"{warm}, then {settings['single_calls']} timed calls per round"
    return (f"{warm}, then at least {settings['single_calls']} timed calls and {settings['min_time']:g} s per "
            + ("block" if settings.get("estimator") else "round"))


def _spread(check: dict | None) -> list[str]:
    """`bench --repeat-check`: the same measurement twice, and how far the speed-ups moved."""
    if not check:
        return []
    rows = [[name, f"{v['batch_speedup'][0]:.2f}x / {v['batch_speedup'][1]:.2f}x",
             f"{v['b1_speedup'][0]:.2f}x / {v['b1_speedup'][1]:.2f}x"] for name, v in check["variants"].items()]
    return ["## Run-to-run spread (`--repeat-check`)",
            f"Every variant measured in two passes. Largest difference between the passes' speed-ups: "
            f"{100 * check['batch_speedup_max_rel_diff']:.1f}% (batch), {100 * check['b1_speedup_max_rel_diff']:.1f}% "
            "(batch 1): the noise floor of this machine for these figures.",
            _md_table(["Variant", "Speed-up batch, pass 1 / 2", "Speed-up b1, pass 1 / 2"], rows, ["-", ":-:", ":-:"])]


def _between_parts(parts: dict | None) -> list[str]:
    """Each part of a bench (fresh copies, in a fresh process with --fresh-process) timed alone: how far its
    speed-ups moved. Named beside each figure: the variant whose range it is, and for the batch figure each
    side's ms per part, so a reader sees whether the variant or the baseline moved."""
    if not parts:
        return []

    def series(values: list[float], unit: str) -> str:
        return ", ".join(f"{v:.2f}{unit}" for v in values)

    variants = parts["variants"]
    worst = max(variants.items(), key=lambda kv: spread(kv[1]["b1_speedup"]))
    widest = max(variants.items(), key=lambda kv: spread(kv[1]["batch_speedup"]))
    text = (f"Each part's rounds alone give their own speed-ups; the widest range between parts (relative to their "
            f"mean) was {100 * parts['batch_speedup_max_range']:.1f}% (batch; {widest[0]}: "
            f"{series(widest[1]['batch_speedup'], 'x')}) and {100 * parts['b1_speedup_max_range']:.1f}% (batch 1; "
            f"{worst[0]}: {series(worst[1]['b1_speedup'], 'x')}). The figures above pool the parts, and their "
            "intervals resample them.")
    baseline = parts.get("baseline")  # older results.json lack it and the ms
    if baseline in variants and widest[0] != baseline:
        text += (f" Batch ms per image in those parts: {widest[0]} {series(widest[1]['batch_ms'], '')}, "
                 f"{baseline} {series(variants[baseline]['batch_ms'], '')}.")
    return ["## Spread between parts", text]


def compare(first: dict, second: dict) -> dict:
    """Two benches of the same variants side by side: each speed-up in both, how far it moved
    (relative to the pair's mean) and whether the two intervals overlap; the largest moves."""
    a = {r["variant"]: r for r in _rows(first) if r["status"] == "ok"}
    b = {r["variant"]: r for r in _rows(second) if r["status"] == "ok"}
    shared = [n for n in a if n in b and a[n].get("batch_speedup") is not None
              and b[n].get("batch_speedup") is not None]
    if not shared:
        raise VggtoolError("the two results share no measured variant with speed-ups: nothing to compare")

    def overlap(x, y, kind):
        lo, hi = f"{kind}_speedup_lo", f"{kind}_speedup_hi"
        if None in (x.get(lo), x.get(hi), y.get(lo), y.get(hi)):
            return None
        return x[lo] <= y[hi] and y[lo] <= x[hi]

    variants = {n: {**{f"{k}_speedup": [a[n][f"{k}_speedup"], b[n][f"{k}_speedup"]] for k in ("batch", "b1")},
                    **{f"{k}_overlap": overlap(a[n], b[n], k) for k in ("batch", "b1")}} for n in shared}
    out = {"variants": variants,
           "batch_speedup_max_rel_diff": max(moved(v["batch_speedup"]) for v in variants.values()),
           "b1_speedup_max_rel_diff": max(moved(v["b1_speedup"]) for v in variants.values()),
           "dates": [first["environment"].get("date"), second["environment"].get("date")],
           "cpu_flags": [first["environment"].get("cpu_flags"), second["environment"].get("cpu_flags")],
           "bench_seconds": [first["environment"].get("bench_seconds"), second["environment"].get("bench_seconds")],
           "rounds": [max((r.get("rounds") or 0 for r in _rows(x)), default=0) for x in (first, second)],
           "passes": [2 if x.get("repeat_check") else 1 for x in (first, second)],
           "baseline_ms": _baseline_ms(a.get("baseline"), b.get("baseline")),
           "skipped": sorted(set(a) ^ set(b)),
           "settings_differ": [k for k in ("batch_size", "protocol", "threads", "cpus", "latency_images")
                               if first["settings"].get(k) != second["settings"].get(k)]}
    return out


def _baseline_ms(x: dict | None, y: dict | None) -> dict | None:
    """The baseline's own ms in both benches (batch, batch 1), where both measured it."""
    if x is None or y is None:
        return None
    ms = {k: [x.get(f), y.get(f)] for k, f in (("batch", "batch_ms"), ("b1", "b1_ms_median"))}
    return ms if None not in ms["batch"] + ms["b1"] else None


def baseline_moved(cmp: dict) -> str:
    """How far the baseline's own time moved between the benches (the machine's speed, or state
    the process kept: the move alone does not say which); a speed-up cancels such a move only
    where it changed both of its variants' times alike."""
    ms = cmp.get("baseline_ms")
    if not ms:
        return ""
    return (f"The baseline's own time moved {100 * moved(ms['batch']):.1f}% in batches ({ms['batch'][0]:.3f} / "
            f"{ms['batch'][1]:.3f} ms per image) and {100 * moved(ms['b1']):.1f}% at batch 1 ({ms['b1'][0]:.3f} / "
            f"{ms['b1'][1]:.3f} ms); a speed-up cancels such a move only where it changed both variants' times "
            "alike.")


def durations(cmp: dict) -> str:
    """How long each bench took and how many rounds it timed, where its results.json says so
    ("?" where it does not: older results.json files have no bench_seconds); a --repeat-check
    bench's seconds and rounds cover both its passes."""
    secs, rounds, passes = cmp["bench_seconds"], cmp["rounds"], cmp["passes"]
    said = []
    if any(s is not None for s in secs):
        said.append("took " + " and ".join("?" if s is None else f"{s:.0f} s" for s in secs)
                    + " (data, loading, scoring and timing; not the interpreter's start)")
    if any(rounds):
        both = [n for n, p in zip(("the first", "the second"), passes) if p == 2]
        said.append("timed " + " and ".join(str(r or "?") for r in rounds) + " rounds" + (
            f" ({' and '.join(both)} over {'its' if len(both) == 1 else 'their'} two --repeat-check passes)"
            if both else ""))
    return "The benches " + "; they ".join(said) + "." if said else ""


def render_comparison(cmp: dict, names: tuple[str, str]) -> str:
    """`vggtool compare` as markdown: every figure in it comes from the two results.json."""
    took, drift = durations(cmp), baseline_moved(cmp)

    def cell(v, k):
        text = f"{v[k + '_speedup'][0]:.2f}x / {v[k + '_speedup'][1]:.2f}x ({100 * moved(v[k + '_speedup']):.1f}%)"
        return text + (", intervals apart" if v.get(k + "_overlap") is False else "")

    rows = [[n, cell(v, "batch"), cell(v, "b1")] for n, v in cmp["variants"].items()]
    flags = " / ".join(sorted(set(f or "?" for f in cmp["cpu_flags"])))
    parts = ["# Two benches compared",
             f"`{names[0]}` ({cmp['dates'][0]}) against `{names[1]}` ({cmp['dates'][1]}); CPU flags: `{flags}`. "
             "Rendered by `vggtool compare` from the two results.json." + (" " + took if took else ""),
             f"Largest difference between the two benches' speed-ups: **{100 * cmp['batch_speedup_max_rel_diff']:.1f}% "
             f"(batch)**, **{100 * cmp['b1_speedup_max_rel_diff']:.1f}% (batch 1)**, relative to the pair's mean. "
             "A pair whose 95% intervals do not overlap is marked \"intervals apart\"." + (" " + drift if drift else ""),
             _md_table(["Variant", "Speed-up batch, first / second (moved)", "Speed-up b1, first / second (moved)"],
                       rows, ["-", ":-:", ":-:"])]
    if cmp["settings_differ"]:
        parts.append("The two benches differ in settings (" + ", ".join(f"`{k}`" for k in cmp["settings_differ"])
                     + "): part of the difference is theirs, not noise.")
    if cmp["skipped"]:
        parts.append("Measured in only one of them (not compared): " + ", ".join(f"`{n}`" for n in cmp["skipped"]))
    return "\n\n".join(parts) + "\n"


def _architecture(ok: list[dict], batch: str) -> list[str]:
    """Parameters and MACs beside measured speed (results from before 0.2 lack them: no section)."""
    if not any(r.get("macs") for r in ok):
        return []
    base = next((r for r in ok if r["variant"] == "baseline" and r.get("macs")), None)
    table = _md_table(
        ["Variant", "Params (M)", "MACs (M)", "MACs / baseline", f"Speed-up {batch}", "Speed-up b1", "Size MB"],
        [[r["variant"], _fmt(r["arch_params"] / 1e6, ".3f"), _fmt(r["macs"] / 1e6, ".1f"),
          _fmt(r["macs"] / base["macs"] if base else None, ".3f"), _fmt(r.get("batch_speedup"), ".2f") + "x",
          _fmt(r.get("b1_speedup"), ".2f") + "x", _fmt(r["size_mb"], ".2f")] for r in ok if r.get("macs")],
        ["-"] + [":-:"] * 6,
    )
    return ["## Parameters, MACs and measured speed",
            "Parameters and multiply-accumulates per 32x32 image of the float architecture each variant has "
            "(Conv2d and Linear weights; a quantized variant keeps its parent's). A MACs ratio is not a speed-up: "
            "both are shown, the speed-ups measured above.", table]


def _stored_size(ok: list[dict]) -> list[str]:
    """Coded variants (weight sharing): the file on disk beside what the decoded model would take."""
    coded = [r for r in ok if r.get("state_dict_mb") is not None]
    if not coded:
        return []
    base = next((r["size_mb"] for r in ok if r["variant"] == "baseline"), None)
    table = _md_table(
        ["Variant", "Stored file MB", "Baseline / stored", "Decoded `torch.save` MB", "Decoded, zlib MB",
         "Non-zero params (M)", "Top1err"],
        [[r["variant"], _fmt(r["size_mb"], ".3f"), _fmt(base / r["size_mb"] if base else None, ".1f") + "x",
          _fmt(r["state_dict_mb"], ".2f"), _fmt(r["dense_zlib_mb"], ".2f"), _fmt(r["nonzero_params"] / 1e6, ".3f"),
          _fmt(r["top1_err"], ".3f")] for r in coded],
        ["-"] + [":-:"] * 6,
    )
    return ["## Stored size of the coded variants",
            "Weight-shared variants are stored as codebooks, Huffman-coded indices and relative positions; the size "
            "is that file's bytes. Beside it, what the decoded dense model takes as `torch.save(state_dict)` (the "
            "report's measure) and zlib-compressed, so no row looks smaller than what is on disk. Errors are "
            "measured on the model decoded from the stored file.", table]


SUMMARY_POINTS = 1.0  # the summary's accuracy budget: top-1 error at most this many points above the baseline's


def _summary(ok: list[dict], batch: int, env: dict) -> list[str]:
    """The report in a few lines: the baseline, then the fastest variant at batch 1 and at `batch`, and the
    smallest, each among those within SUMMARY_POINTS of the baseline's top-1 error."""
    base = next((r for r in ok if r["variant"] == "baseline"), None)
    if base is None or base.get("top1_err") is None:
        return []
    budget = base["top1_err"] + SUMMARY_POINTS / 100
    within = [r for r in ok if r["variant"] != "baseline" and r.get("top1_err") is not None
              and r["top1_err"] <= budget + 1e-12]

    def figures(r: dict) -> str:
        return (f"top-1 error {r['top1_err']:.3f} ({_points(r, base)} points), {_speedup(r, 'b1', 'x')} at batch 1, "
                f"{_speedup(r, 'batch', 'x')} at batch {batch}, {r['size_mb']:.2f} MB "
                f"({base['size_mb'] / r['size_mb']:.1f}x smaller)")

    lines = [f"- **Baseline** `baseline`: top-1 / top-5 error {base['top1_err']:.3f} / {base['top5_err']:.3f}, "
             f"{_fmt(base.get('b1_ms_median'), '.2f')} ms per image at batch 1, {_fmt(base.get('batch_ms'), '.2f')} at "
             f"batch {batch}, {base['size_mb']:.2f} MB."]
    for title, key in (("Fastest at batch 1", "b1_speedup"), (f"Fastest at batch {batch}", "batch_speedup"),
                       ("Smallest", "size_mb")):
        ranked = [r for r in within if r.get(key) is not None]
        if not ranked:
            lines.append(f"- **{title}**: no variant within {SUMMARY_POINTS:g} point of the baseline's error.")
            continue
        best = min(ranked, key=lambda r: r[key]) if key == "size_mb" else max(ranked, key=lambda r: r[key])
        lines.append(f"- **{title}** within {SUMMARY_POINTS:g} point: `{best['variant']}` ({best['method']}), "
                     + figures(best) + ".")
    return ["## Summary",
            f"Speed-ups are over the baseline in the same bench, on {env.get('cpu_model', '?')} (CPU flags "
            f"`{env.get('cpu_flags', '?')}`); errors on {ok[0].get('images_accuracy') or 'the'} test images.",
            "\n".join(lines)]


def _points(row: dict, base: dict | None) -> str:
    """A variant's top-1 error minus the baseline's, in percentage points."""
    if base is None or row.get("top1_err") is None or base.get("top1_err") is None:
        return "-"
    return f"{100 * (row['top1_err'] - base['top1_err']):+.1f}"


def _finetuning(tunings: dict[str, dict | list[dict]], ok: list[dict]) -> list[str]:
    """What each variant's own fine-tuning cost: epochs, precision, training minutes (a stacked variant
    inherits its parent's and is not listed again)."""
    if not tunings:
        return []
    errors = {r["variant"]: r.get("top1_err") for r in ok}
    rows = []
    for variant, runs in tunings.items():
        runs = runs if isinstance(runs, list) else [runs]  # iterative pruning: one fine-tuning per round
        history = [e for run in runs for e in run["history"]]
        seconds = [e.get("seconds") for e in history]
        kept = [e["val_top1_err"] for e in runs[-1]["history"] if "val_top1_err" in e]  # the last round's best is kept
        rows.append([f"`{variant}`", str(len(history)), ", ".join(sorted({e.get("precision", "?") for e in history})),
                     "-" if None in seconds else f"{sum(seconds) / 60:.1f}", _fmt(min(kept, default=None), ".3f"),
                     _fmt(errors.get(variant), ".3f")])
    return ["## Fine-tuning",
            "Each variant's own fine-tuning on the training split (the best epoch on validation kept): its epochs, "
            "the precision of its training steps and the minutes they took on the machine that built it (network "
            "slimming's epochs, if any, are not counted).",
            _md_table(["Variant", "Epochs", "Precision", "Training minutes", "Best val top-1 err", "Test top-1 err"],
                      rows, ["-"] + [":-:"] * 5)]


def _sensitivity(scans: dict[str, list[dict]]) -> list[str]:
    """Validation error after structured pruning without fine-tuning, per amount removed."""
    parts = []
    for variant, rows in scans.items():
        parts += [f"## Pruning sensitivity of `{variant}`",
                  "Validation top-1 error right after removing each share, before any fine-tuning: where the "
                  "curve turns up, fine-tuning has the most to recover.",
                  _md_table(["Removed", "Params (M)", "MACs (M)", "Val top-1 err"],
                            [[f"{r['amount']:.1f}", _fmt(r["params"] / 1e6, ".3f"), _fmt(r["macs"] / 1e6, ".1f"),
                              _fmt(r["val_top1_err"], ".3f")] for r in rows], [":-:"] * 4)]
    return parts


def _layer_sensitivity(scans: dict[str, list[dict]]) -> list[str]:
    """int8 layer by layer: each weight layer quantized alone, the most harmful first."""
    parts = []
    for variant, rows in scans.items():
        parts += [f"## int8 sensitivity per layer of `{variant}`",
                  "Each layer quantized alone, the rest kept float: validation top-1 error and agreement with the "
                  "float model. The layers at the top are the candidates for `--exclude`.",
                  _md_table(["Layer", "Val top-1 err (float)", "Top-1 agreement", "Max |logit diff|"],
                            [[f"`{r['node']}`", f"{_fmt(r['val_top1_err'], '.3f')} ({_fmt(r['fp32_val_top1_err'], '.3f')})",
                              _fmt(r["top1_agreement"], ".3f"), _fmt(r["max_abs_logit_diff"], ".3f")] for r in rows],
                            ["-"] + [":-:"] * 3)]
    return parts


# ---------------------------------------------------------------- plots
DPI = 110  # figures are laid out at the resolution they are saved at, so measured label boxes hold in the PNG
MARKER_PT = 5  # radius kept clear around each point: the Pareto ring's
LABEL_GAP_PX = 2
LEADER_PT = 12  # a label placed further than this from its point gets a leader line
# Text alignment, by the sign of a label's offset, that keeps the label on that side of its point.
HA, VA = {-1: "right", 0: "center", 1: "left"}, {-1: "top", 0: "center", 1: "bottom"}


def pareto(points: list[tuple[float, float, str]], spans: dict[str, tuple[float, float]] | None = None
           ) -> list[tuple[float, float, str]]:
    """Points not beaten on both latency and error, sorted by latency. With `spans`
    (each point's latency range over the rounds), a point is beaten only by one that
    is faster beyond both ranges, or more accurate and not slower within them:
    figures closer than their spread are not presented as different."""
    spans = spans or {}

    def beats(q, p) -> bool:
        q_lo, q_hi = spans.get(q[2], (q[0], q[0]))
        p_lo, p_hi = spans.get(p[2], (p[0], p[0]))
        return (q[1] <= p[1] and q_hi < p_lo) or (q[1] < p[1] and q_lo <= p_hi and q_hi <= p_hi)

    return sorted(p for p in points if not any(beats(q, p) for q in points if q is not p))


def latency_spans(ok: list[dict]) -> dict[str, tuple[float, float]]:
    """Each variant's batched latency interval: the bootstrap interval where the results have
    one, else (older results) the lowest and highest per-round figure."""
    spans = {}
    for r in ok:
        for lo, hi in (("batch_ms_lo", "batch_ms_hi"), ("batch_ms_min", "batch_ms_max")):
            if r.get(lo) is not None and r.get(hi) is not None:
                spans[r["variant"]] = (r[lo], r[hi])
                break
    return spans


def _figure():
    # A bare Figure on the Agg canvas: no pyplot state, no GUI backend, nothing to close.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def error_vs_latency(results: dict):
    """The trade-off figure and its point labels (returned so that their placement can be checked)."""
    ok = [r for r in _rows(results) if r["status"] == "ok"]
    points = [(r["batch_ms"], r["top1_err"], r["variant"]) for r in ok]
    spans = latency_spans(ok)
    fig, ax = _figure()
    latencies = [x for x, _, _ in points]
    ax.scatter(latencies, [y for _, y, _ in points])
    if spans:  # the interval of each latency (older results: min-max over the rounds)
        ax.errorbar(latencies, [y for _, y, _ in points], fmt="none", ecolor="tab:blue", elinewidth=1, capsize=3,
                    xerr=[[max(0.0, x - spans.get(n, (x, x))[0]) for x, _, n in points],
                          [max(0.0, spans.get(n, (x, x))[1] - x) for x, _, n in points]])
    front = pareto(points, spans)
    ax.plot([p[0] for p in front], [p[1] for p in front], "r--o", mfc="none", ms=2 * MARKER_PT, label="Pareto front")
    if latencies and max(latencies) > 10 * min(latencies):  # a linear axis would crowd the fast variants against 0
        from matplotlib.ticker import LogLocator

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # decades alone leave few ticks to read values by
        ax.xaxis.set_major_formatter("{x:g}")
    ax.set_xlabel(f"ms / image (batch {results['settings']['batch_size']})")
    ax.set_ylabel("top-1 error")
    ax.ticklabel_format(axis="y", useOffset=False)  # errors all near one value must not read as "+9.9e-1"
    ax.set_title("Error vs latency")
    legend = ax.legend()
    fig.tight_layout()
    fig.canvas.draw()  # settles limits, layout and the legend's place before labels are measured against them
    renderer = fig.canvas.get_renderer()
    # "best" placement would move the legend off the labels and onto the points: keep it where it is now.
    legend.set_loc(tuple(legend.get_window_extent(renderer).transformed(ax.transAxes.inverted()).p0))
    return fig, place_labels(ax, points, renderer, avoid=[legend.get_window_extent(renderer)])


def _trace(xy, step_px: float = 2.0):
    """Points every `step_px` along a polyline in display coordinates, as (xs, ys): which boxes does it cross?"""
    import numpy as np

    pieces = [xy[:1]]
    for a, b in zip(xy[:-1], xy[1:]):
        n = max(1, int(np.hypot(*(b - a)) / step_px))
        pieces.append(a + (b - a) * np.linspace(0, 1, n + 1)[1:, None])
    return np.concatenate(pieces).T


def _offsets(reach_pt: int = 100, step_pt: int = 4) -> list[tuple[int, int]]:
    """Where a label may go, in points from its point: nearest first; on a tie right before left, up before down."""
    n = reach_pt // step_pt
    grid = [(dx * step_pt, dy * step_pt) for dx, dy in product(range(-n, n + 1), repeat=2) if dx or dy]
    return sorted(grid, key=lambda o: (math.hypot(*o), -o[0], -o[1]))


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def _overlap(a, b) -> float:
    """Area shared by two boxes given as (x0, y0, x1, y1)."""
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _label_box(anchor, size, offset_pt, px: float) -> tuple[float, float, float, float]:
    """The box, with the gap around it, of a text of `size` placed `offset_pt` from `anchor` and aligned to that
    side (HA, VA). Arithmetic: measuring the text at each of thousands of offsets would take seconds."""
    (w, h), (dx, dy) = size, offset_pt
    x0 = anchor[0] + dx * px - w * (1 - _sign(dx)) / 2 - LABEL_GAP_PX
    y0 = anchor[1] + dy * px - h * (1 - _sign(dy)) / 2 - LABEL_GAP_PX
    return x0, y0, x0 + w + 2 * LABEL_GAP_PX, y0 + h + 2 * LABEL_GAP_PX


def place_labels(ax, points: list[tuple[float, float, str]], renderer, avoid=()) -> list:
    """Annotate each point where its text covers no other label, marker or line, nothing in `avoid`, and stays
    inside the axes; the nearest such spot wins. A label moved off its point gets a thin leader line."""
    import numpy as np

    px = renderer.points_to_pixels(1)
    centres = ax.transData.transform([(x, y) for x, y, _ in points])
    r = MARKER_PT * px
    taken = [(cx - r, cy - r, cx + r, cy + r) for cx, cy in centres] + [tuple(b.extents) for b in avoid]
    lines = [_trace(line.get_transform().transform(line.get_xydata())) for line in ax.get_lines()]
    frame = tuple(ax.get_window_extent(renderer).extents)
    offsets = _offsets()

    def clash(box):
        x0, y0, x1, y1 = box
        outside = (x1 - x0) * (y1 - y0) - _overlap(box, frame)
        crossed = sum(np.count_nonzero((xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)) for xs, ys in lines)
        return outside + crossed + sum(_overlap(box, t) for t in taken)

    labels = []
    for (x, y, name), (cx, cy) in zip(points, centres):
        label = ax.annotate(name, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=8)
        size = label.get_window_extent(renderer).size
        best = None
        for offset in offsets:
            cost = clash(_label_box((cx, cy), size, offset, px))
            if best is None or cost < best[0]:
                best = (cost, offset)
            if cost == 0:
                break
        offset = best[1]  # when no spot is free, the least covered one
        label.xyann = offset
        label.set_horizontalalignment(HA[_sign(offset[0])])
        label.set_verticalalignment(VA[_sign(offset[1])])
        taken.append(_label_box((cx, cy), size, offset, px))
        if math.hypot(*offset) > LEADER_PT:
            ax.annotate("", (x, y), xytext=offset, textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6, "shrinkA": 0, "shrinkB": MARKER_PT})
            lines.append(_trace(np.array([(cx, cy), (cx + offset[0] * px, cy + offset[1] * px)])))  # keep others off it
        labels.append(label)
    return labels


def size_chart(results: dict):
    rows = [r for r in _rows(results) if r["status"] == "ok"]
    fig, ax = _figure()
    ax.barh([r["variant"] for r in rows], [r["size_mb"] for r in rows], label="size (MB)")
    ax.barh([r["variant"] for r in rows], [r["compressed_mb"] for r in rows], alpha=0.6, label="zlib-compressed file")
    ax.invert_yaxis()
    ax.set_xlabel("MB")
    ax.set_title("Model size per variant")
    ax.legend()
    fig.tight_layout()
    return fig


def plot(results: dict, folder: Path) -> list[Path]:
    out = [Path(folder) / PLOT_TRADEOFF, Path(folder) / PLOT_SIZE]
    _save(error_vs_latency(results)[0], out[0])
    _save(size_chart(results), out[1])
    return out


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())


def render_all(results: dict, folder: Path, copy_to: Path | None = None) -> list[Path]:
    """REPORT.md and plots from `results`; optionally copied to another folder too."""
    folder = Path(folder)
    remove_stale_temporaries(folder)  # what a killed bench or report left under temporary names
    write_text(folder / REPORT_MD, render_markdown(results))
    written = [folder / REPORT_MD, *plot(results, folder)]
    if copy_to is not None:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        for path in written + [folder / RESULTS_JSON, folder / RESULTS_CSV]:
            if path.exists():
                shutil.copyfile(path, Path(copy_to) / path.name)
    return written


def publish(results: dict, folder: Path, copy_to: Path | None = None) -> list[Path]:
    """Write results.json and results.csv, then render REPORT.md and the plots; returns the paths written."""
    return save_results(results, folder) + render_all(results, folder, copy_to)
