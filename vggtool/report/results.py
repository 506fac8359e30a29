"""results.json in and out, and the one step that brings any older one to the current schema.

`results.json` ({"environment", "settings", "rows", ...}) is the single source; every view
reads it through `upgrade`, so no renderer knows an older layout.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from vggtool.errors import VggtoolError
from vggtool.files import write_json, write_text

RESULTS_JSON, RESULTS_CSV = "results.json", "results.csv"

# The published table of the seed report (seed-report.md), shown beside our measurements:
# top-1 error, top-5 error, runtime ms, size MB.
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

# Every field a row has; a figure an older bench did not measure is None.
ROW_FIELDS = [
    "variant", "label", "method", "type", "status", "top1_err", "top5_err", "batch_ms", "batch_ms_min",
    "batch_ms_max", "batch_ms_lo", "batch_ms_hi", "batch_speedup", "batch_speedup_lo", "batch_speedup_hi",
    "b1_ms_median", "b1_ms_p90", "b1_ms_iqr", "b1_speedup", "b1_speedup_lo", "b1_speedup_hi", "size_mb", "file_mb",
    "compressed_mb", "state_dict_mb", "dense_zlib_mb", "params", "nonzero_params", "sparsity_conv", "sparsity_all",
    "macs", "arch_params", "images_accuracy", "images_latency", "images_timed", "calls_timed", "b1_calls", "rounds",
    "engine", "runtime", "compute_precision", "runtime_settings",
]

# What a setting an older results.json lacks meant when it was written (None: not recorded).
SETTINGS = {
    "batch_size": None, "rounds": None, "warmup": None, "single_calls": None, "threads": None, "cpus": None,
    "latency_images": None,
    "protocol": "report",  # before --protocol every bench timed each image once, as the report did
    "min_time": None,  # before --min-time: a fixed number of warm-up calls, no least time per block
    "estimator": None,  # before the bootstrap: medians of per-round speed-ups, no intervals
    "accuracy_images": 0, "idle_gap": 0.0, "time_budget": 0.0, "loads": 1, "fresh_process": False,
    "repeat_check": False,
    "runtime": None,  # before --runtime: each variant in its own runtime (rows say which since)
}
ENVIRONMENT = ("date", "cpu_model", "cpu_flags", "bench_seconds", "torch", "onnxruntime", "openvino")
# Sections a bench adds when it measured them; empty (or None) where it did not.
SECTIONS = {"subject": None, "parts": None, "finetune": {}, "sensitivity": {},
            "layer_sensitivity": {}, "skipped": {}}


def upgrade(results: dict) -> dict:
    """`results` in the current schema, whatever version of vggtool wrote them: renamed fields under their
    current names, every row field, setting and section present, and a short display label on every row.
    Measured figures are never changed; the current schema comes back as it was."""
    rows = [_filled({RENAMED.get(k, k): v for k, v in row.items()}, dict.fromkeys(ROW_FIELDS))
            for row in results["rows"]]
    _label(rows)
    _runtime(rows)
    recorded = results.get("settings", {})
    settings = _filled(recorded, SETTINGS)
    if "idle_before" not in settings:  # with the bootstrap, and before --time-budget: idle before each block
        settings["idle_before"] = "block" if settings["estimator"] and "time_budget" not in recorded else "turn"
    out = {**SECTIONS, **results, "rows": rows, "settings": settings,
           "environment": _filled(results.get("environment", {}), dict.fromkeys(ENVIRONMENT))}
    out.pop("repeat_check", None)  # a measurement twice, removed from the bench; no committed result holds one
    if out["subject"] is not None:
        out["subject"] = {"imported_from": None, "epochs": None, **out["subject"]}
    if out["parts"] is not None:
        out["parts"] = {"baseline": None, **out["parts"]}  # older parts held no ms per part, nor named the baseline
    out["finetune"] = {name: [_tuning(run) for run in (runs if isinstance(runs, list) else [runs])]
                       for name, runs in out["finetune"].items()}  # one fine-tuning, or one per pruning round
    return out


def _filled(recorded: dict, defaults: dict) -> dict:
    """`recorded` in its own order, then each of `defaults` it lacks."""
    return {**recorded, **{k: v for k, v in defaults.items() if k not in recorded}}


def _tuning(run: dict) -> dict:
    history = [{"precision": None, "seconds": None, "val_top1_err": None, **e} for e in run["history"]]
    return {**run, "history": history}


def _label(rows: list[dict]) -> None:
    """Give every row a display label, unique in the file (a row that has one keeps it)."""
    labels = [r["label"] for r in rows]
    if None not in labels and len(set(labels)) == len(labels):
        return
    from vggtool.compress import display_labels  # the recipes: imported only when a label is missing

    made = display_labels([r["variant"] for r in rows])
    taken = {r["label"] for r in rows if r["label"] is not None}
    for r in rows:
        if r["label"] is None or labels.count(r["label"]) > 1:
            r["label"] = made[r["variant"]] if made[r["variant"]] not in taken else r["variant"]


def _runtime(rows: list[dict]) -> None:
    """Name the runtime of every row that does not (benches before --runtime ran each variant in its own:
    torch, or ONNX Runtime for an ONNX file, read from the recipes the variant's name stands for)."""
    missing = [r for r in rows if r["runtime"] is None]
    if not missing:
        return
    from vggtool.compress import parse_name  # the recipes: imported only when a runtime is missing
    from vggtool.runtimes import OWN, variant_of

    for r in missing:
        if "@" in r["variant"]:
            r["runtime"] = r["variant"].split("@", 1)[1]
            continue
        try:
            r["runtime"] = OWN[parse_name(variant_of(r["variant"]))[-1].output.value]
        except Exception:  # a name that reads as no recipe (a plugin not installed here): not known
            pass


def ordered(rows: list[dict]) -> list[dict]:
    """The report's eight first, in its order, then the rest by name; each variant's rows in other runtimes
    after its own."""
    rank = {name: i for i, name in enumerate(REPORT_ORDER)}

    def order(r: dict) -> tuple:
        name = r["variant"].split("@", 1)[0]
        return rank.get(name, len(rank)), name, r["variant"] != name, r["variant"]

    return sorted(rows, key=order)


def save_results(results: dict, folder: Path) -> list[Path]:
    """results.json (in the current schema) and results.csv, each written atomically; returns their paths."""
    folder = Path(folder)
    results = upgrade(results)
    write_json(folder / RESULTS_JSON, results)
    buf = io.StringIO()
    env = results["environment"]
    extra = {k: env[k] for k in ("cpu_model", "torch", "onnxruntime", "date")}
    writer = csv.DictWriter(buf, fieldnames=list(results["rows"][0]) + list(extra))
    writer.writeheader()
    for row in results["rows"]:
        writer.writerow({**row, **extra})
    write_text(folder / RESULTS_CSV, buf.getvalue())
    return [folder / RESULTS_JSON, folder / RESULTS_CSV]


def load_results(folder: Path) -> dict:
    """The results.json in `folder`, in the current schema."""
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
    if not all(isinstance(r.get("variant"), str) for r in results["rows"]):
        return 'a row has no "variant" name'
    for key in ("environment", "settings"):
        if not isinstance(results.get(key), dict):
            return f'"{key}" is not an object'
    for key in SECTIONS:
        if results.get(key) is not None and not isinstance(results[key], dict):
            return f'"{key}" is not an object'
    return None


def check_writable(folder: Path) -> None:
    """Refuse to replace a results.json that cannot be parsed: it may be someone's only copy."""
    if (Path(folder) / RESULTS_JSON).exists():
        load_results(folder)
