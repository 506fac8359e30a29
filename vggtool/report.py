"""Views of result rows: console tables, REPORT.md and plots. Nothing here measures.

`results.json` ({"environment", "settings", "rows"}) is the single source;
`results.csv`, `REPORT.md` and the PNG plots are rendered from it.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vggtool.errors import VggtoolError
from vggtool.files import write_bytes, write_json, write_text

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


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def variant_figure_rows(metas: dict[str, dict]):
    """Columns, rows and right-justification for the figures known at build time."""
    columns = ["variant", "size MB", "file MB", "zlib MB", "sparsity conv", "sparsity all", "ONNX max|d| / top-1 agree"]
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
def save_results(results: dict, folder: Path) -> None:
    """results.json and results.csv, each written atomically."""
    folder = Path(folder)
    write_json(folder / RESULTS_JSON, results)
    buf = io.StringIO()
    env = results["environment"]
    writer = csv.DictWriter(buf, fieldnames=list(results["rows"][0]) + ["cpu_model", "torch", "onnxruntime", "date"])
    writer.writeheader()
    for row in results["rows"]:
        writer.writerow({**row, "cpu_model": env.get("cpu_model"), "torch": env.get("torch"),
                         "onnxruntime": env.get("onnxruntime"), "date": env.get("date")})
    write_text(folder / RESULTS_CSV, buf.getvalue())


def load_results(folder: Path) -> dict:
    path = Path(folder) / RESULTS_JSON
    if not path.exists():
        raise VggtoolError(f"no {RESULTS_JSON} in {folder}: run `vggtool bench` first")
    try:
        results = json.loads(path.read_text())
        assert isinstance(results["rows"], list) and isinstance(results["environment"], dict)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as e:
        raise VggtoolError(f"{path} cannot be parsed ({type(e).__name__}: {e}); it was left untouched") from None
    return results


def check_writable(folder: Path) -> None:
    """Refuse to replace a results.json that cannot be parsed: it may be someone's only copy."""
    if (Path(folder) / RESULTS_JSON).exists():
        load_results(folder)


def ordered(rows: list[dict]) -> list[dict]:
    rank = {name: i for i, name in enumerate(REPORT_ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r["variant"], len(rank)), r["variant"]))


# ---------------------------------------------------------------- console
def console_table(results: dict) -> Table:
    t = Table(title="vggtool bench: error, ms/image at batch 16 and 1 (x = speed-up over baseline), size",
              caption="b1 ms is the median of the batch-1 calls")
    columns = ["variant", "top-1", "top-5", "b16 ms", "b16 x", "b1 ms", "b1 p90", "b1 x", "MB", "status"]
    for i, c in enumerate(columns):
        extra = {"no_wrap": True, "min_width": max([7] + [len(r["variant"]) for r in results["rows"]])} if i == 0 else {}
        t.add_column(c, justify="left" if i in (0, 9) else "right", **extra)
    for r in ordered(results["rows"]):
        t.add_row(r["variant"], _fmt(r["top1_err"], ".4f"), _fmt(r["top5_err"], ".4f"), _fmt(r["b16_ms"], ".2f"),
                  _fmt(r.get("b16_speedup"), ".2f"), _fmt(r["b1_ms_median"], ".2f"), _fmt(r["b1_ms_p90"], ".2f"),
                  _fmt(r.get("b1_speedup"), ".2f"), _fmt(r["size_mb"], ".2f"), r["status"])
    return t


def render_console(results: dict, width: int = 120) -> str:
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
    rows = ordered(results["rows"])
    ok = [r for r in rows if r["status"] == "ok"]
    main = _md_table(
        ["Method", "Type", "Top1err", "Top5err", "Runtime (ms)", "Model size (MB)"],
        [[r["method"], r["type"], _fmt(r["top1_err"], ".3f"), _fmt(r["top5_err"], ".3f"), _fmt(r["b16_ms"], ".2f"),
          _fmt(r["size_mb"], ".2f")] for r in ok],
        ["-", "-", ":-:", ":-:", ":-:", ":-:"],
    )
    latency = _md_table(
        ["Variant", "ms/image b16 (min-max)", "Speed-up b16", "Batch-1 median ms", "p90", "IQR", "Speed-up b1",
         "File MB", "zlib MB", "Sparsity conv / all"],
        [[r["variant"], f"{_fmt(r['b16_ms'], '.2f')} ({_fmt(r['b16_ms_min'], '.2f')}-{_fmt(r['b16_ms_max'], '.2f')})",
          _fmt(r.get("b16_speedup"), ".2f") + "x", _fmt(r["b1_ms_median"], ".2f"), _fmt(r["b1_ms_p90"], ".2f"),
          _fmt(r["b1_ms_iqr"], ".2f"), _fmt(r.get("b1_speedup"), ".2f") + "x", _fmt(r["file_mb"], ".2f"),
          _fmt(r["compressed_mb"], ".2f"), f"{_fmt(r['sparsity_conv'], '.3f')} / {_fmt(r['sparsity_all'], '.3f')}"]
         for r in ok],
        ["-"] + [":-:"] * 9,
    )
    side = _md_table(
        ["Variant", "Top1err ours / published", "Top5err ours / published", "Runtime ms ours / published",
         "Size MB ours / published"],
        [[r["variant"]] + [f"{_fmt(r[k], spec)} / {_fmt(p, spec)}" for k, spec, p in zip(
            ("top1_err", "top5_err", "b16_ms", "size_mb"), (".3f", ".3f", ".2f", ".2f"), PUBLISHED[r["variant"]])]
         for r in ok if r["variant"] in PUBLISHED],
        ["-"] + [":-:"] * 4,
    )
    failed = [f"- `{r['variant']}`: {r['status']}" for r in rows if r["status"] != "ok"]
    env_lines = [f"- {k}: `{v}`" for k, v in env.items()]
    set_lines = [f"- {k}: `{v}`" for k, v in settings.items()]
    images = ok[0]["images_accuracy"] if ok else 0
    lat_images = ok[0]["images_latency"] if ok else 0
    subject = results.get("subject")
    about = (f"Model: `{subject['arch']}` at width {subject['width']}, trained {subject['epochs']} epochs (run "
             f"`{subject['run']}`); data: {subject['data']} test split, {subject['test_images']} images. "
             if subject else "")
    parts = [
        "# VGG compression report",
        about + f"Measured by `vggtool bench` on {env.get('date', '?')}; rendered by `vggtool report` from "
        "results.json. No figure here is typed by hand.",
        "## Results (the report's table)",
        f"Errors over {images} test images. Runtime is the report's protocol: batches of "
        f"{settings['batch_size']}, time inside the model call summed over {lat_images} images, per image "
        f"(median of {settings['rounds']} interleaved rounds). Size is `torch.save(state_dict)` in MB "
        "(ONNX: the file).",
        main,
        "## Latency and speed-up",
        "Speed-ups are over `baseline`, computed round by round and then the median taken. Batch-1: "
        f"{settings['warmup']} warm-up calls, then {settings['single_calls']} timed calls per round.",
        latency,
        "## Beside the published report",
        "The published figures come from a T4 machine's Xeon CPU and the official CIFAR-100 split; ours from the "
        "environment below.",
        side,
    ]
    if failed:
        parts += ["## Variants that failed", "\n".join(failed)]
    parts += ["## Environment", "\n".join(env_lines), "## Settings", "\n".join(set_lines)]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- plots
def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points not beaten on both latency and error, sorted by latency."""
    front, best = [], float("inf")
    for x, y, name in sorted(points):
        if y < best:
            front.append((x, y, name))
            best = y
    return front


def plot(results: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ordered(results["rows"]) if r["status"] == "ok"]
    folder = Path(folder)
    points = [(r["b16_ms"], r["top1_err"], r["variant"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    for x, y, name in points:
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto(points)
    ax.plot([p[0] for p in front], [p[1] for p in front], "r--o", mfc="none", ms=10, label="Pareto front")
    ax.set_xlabel(f"ms / image (batch {results['settings']['batch_size']})")
    ax.set_ylabel("top-1 error")
    ax.set_title("Error vs latency")
    ax.legend()
    fig.tight_layout()
    out = [folder / PLOT_TRADEOFF, folder / PLOT_SIZE]
    _save(fig, out[0])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.barh([r["variant"] for r in rows], [r["size_mb"] for r in rows], label="size (MB)")
    ax.barh([r["variant"] for r in rows], [r["compressed_mb"] for r in rows], alpha=0.6, label="zlib-compressed file")
    ax.invert_yaxis()
    ax.set_xlabel("MB")
    ax.set_title("Model size per variant")
    ax.legend()
    fig.tight_layout()
    _save(fig, out[1])
    plt.close("all")
    return out


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes(path, buf.getvalue())


def render_all(results: dict, folder: Path, copy_to: Path | None = None) -> list[Path]:
    """REPORT.md and plots from `results`; optionally copied to another folder too."""
    folder = Path(folder)
    write_text(folder / REPORT_MD, render_markdown(results))
    written = [folder / REPORT_MD, *plot(results, folder)]
    if copy_to is not None:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        for path in written + [folder / RESULTS_JSON, folder / RESULTS_CSV]:
            if path.exists():
                shutil.copyfile(path, Path(copy_to) / path.name)
    return written
