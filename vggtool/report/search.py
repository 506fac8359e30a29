"""A search's view: its REPORT.md section (the chosen variant and why, the first within the budget beside it, the
front, every candidate) and the front's figure, from search.json and search.jsonl."""

from __future__ import annotations

from pathlib import Path

from vggtool.compress import display_label, display_labels
from vggtool.files import write_text
from vggtool.report.plots import _figure, _save, pareto
from vggtool.report.text import fmt, md_table

SEARCH_REPORT, SEARCH_PLOT = "REPORT.md", "search_front.png"
PANELS = (("b1_ms", "ms / image at batch 1"), ("batch_ms", "ms / image at batch 16"), ("size_mb", "MB stored"))


def label(key: str, labels: dict[str, str] | None = None) -> str:
    """A candidate's label: its variant's (from `labels`, unique among a search's, where given) and its runtime."""
    name, _, runtime = key.partition("@")
    return (labels or {}).get(name, display_label(name)) + (f" on {runtime}" if runtime else "")


def _labels(records: list[dict]) -> dict[str, str]:
    return display_labels(r["key"].partition("@")[0] for r in records if r.get("stage") == "proxy")


def _speed(row: dict | None, kind: str) -> str:
    if not row or row.get(f"{kind}_speedup") is None:
        return "-"
    lo, hi = row.get(f"{kind}_speedup_lo"), row.get(f"{kind}_speedup_hi")
    return f"{row[f'{kind}_speedup']:.2f}x" + (f" [{lo:.2f}-{hi:.2f}]" if lo is not None and hi is not None else "")


def section(summary: dict, records: list[dict] | None = None) -> list[str]:
    """The search's part of a REPORT.md, as markdown blocks."""
    req, env, base = summary["request"], summary.get("environment", {}), summary["baseline"]
    flags = env.get("cpu_flags_relevant") or env.get("cpu_flags") or "?"
    out = ["## Search", f"`vggtool search --max-drop {req['max_drop']:g} --objective {req['objective']} "
           f"--budget-minutes {req['budget_minutes']:g}` on {env.get('cpu_model', '?')} (flags: {flags}), "
           f"{summary.get('candidates', 0)} candidates in {summary['seconds'] / 60:.1f} of {req['budget_minutes']:g} "
           f"minutes. Chosen on the validation split (baseline {100 * base['val_err']:.2f}% top-1 error, budget "
           f"{100 * summary['limit_val_err']:.2f}%); "
           + (f"the test split was read {summary.get('test_reads', 1)} time(s), after the choice, to report it."
              if summary.get("chosen") else "the test split was not read.")]
    chosen, first = summary.get("chosen"), summary.get("first")
    if chosen is None:
        out.append(f"Nothing chosen: {summary['why']}.")
        return out
    rows = [["chosen", label(chosen["key"]), f"{100 * chosen['val_err']:.2f}", fmt(_pct(chosen.get("test_err")), ".2f"),
             _speed(chosen, "b1"), _speed(chosen, "batch"), fmt(chosen.get("size_mb"), ".2f")]]
    if first is not None:
        rows.append(["first within the budget", label(first["key"]), f"{100 * first['val_err']:.2f}", "-",
                     _speed(first, "b1"), _speed(first, "batch"), fmt(first.get("size_mb"), ".2f")])
    out.append(md_table(["", "variant", "val err %", "test err %", "b1 speed-up", "b16 speed-up", "MB"], rows,
                        ["-", "-", "-:", "-:", "-:", "-:", "-:"]))
    test = (f"Its test error is {100 * chosen['test_err']:.2f}% against the baseline's "
            f"{100 * chosen['baseline_test_err']:.2f}% ({100 * (chosen['test_err'] - chosen['baseline_test_err']):+.2f} "
            "points)." if chosen.get("test_err") is not None else f"Its test error: {chosen.get('test_failed')}.")
    out.append(f"**{label(chosen['key'])}** (`{chosen['key']}`): {summary['why']}. {test}"
               + (f" Stopping at the first candidate within the budget, as a fixed-order tuner does, would have given "
                  f"{label(first['key'])} at {_speed(first, 'b1')} at batch 1." if first else ""))
    front = summary.get("front", {})
    labels = _labels(records or [])
    out.append(f"Front (error on the first {summary.get('proxy_images', 'N')} validation images against the short "
               "timing or the size, every candidate measured alike): "
               + "; ".join(f"{name}: {', '.join(label(k, labels) for k in front.get(name, []))}" for name in front) + ".")
    if records:
        out.append(candidates_table(records))
    return out


def _pct(value):
    return None if value is None else 100 * value


def candidates_table(records: list[dict]) -> str:
    """Every candidate measured: its subset error, its full-split error where confirmed, its short timing."""
    full = {r["key"]: r["val_err"] for r in records if r.get("stage") == "confirm" and "val_err" in r}
    rows, labels = [], _labels(records)
    last = {r["key"]: r for r in records if r.get("stage") == "proxy"}  # a rerun may decide a skipped one again
    for r in last.values():
        status = r.get("failed") or r.get("skipped")
        rows.append([label(r["key"], labels), fmt(_pct(r.get("val_err_proxy")), ".2f"),
                     fmt(_pct(full.get(r["key"])), ".2f"),
                     fmt(r.get("b1_ms"), ".3f"), fmt(r.get("batch_ms"), ".3f"), fmt(r.get("size_mb"), ".2f"),
                     f"{r.get('seconds', 0):.0f}", status or ""])
    return md_table(["candidate", "val err % (subset)", "val err % (full)", "b1 ms", "b16 ms", "MB", "s", "note"],
                    rows, ["-", "-:", "-:", "-:", "-:", "-:", "-:", "-"])


def front_figure(records: list[dict], summary: dict):
    """Validation error (subset) against ms at batch 1, at batch 16 and MB: every candidate measured alike, the
    front in red, the confirmed ones ringed, the subset's budget dotted."""
    from vggtool.search.engine import points as search_points  # (vggtool.search imports the report's pareto)

    confirmed = {r["key"] for r in records if r.get("stage") == "confirm" and "val_err" in r}
    fig, _ = _figure(3.6, 12.0)
    fig.clear()
    axes = fig.subplots(1, 3)
    chosen = (summary.get("chosen") or {}).get("key")
    for ax, (field, xlabel) in zip(axes, PANELS):
        points = search_points(records, field)
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=12, zorder=3)
        ringed = [p for p in points if p[2] in confirmed]
        ax.scatter([p[0] for p in ringed], [p[1] for p in ringed], s=60, facecolors="none", edgecolors="tab:green",
                   zorder=4)
        front = pareto(points)
        ax.plot([p[0] for p in front], [p[1] for p in front], "r--", zorder=2)
        for x, y, k in points:
            if k == chosen:
                ax.annotate("chosen", (x, y), xytext=(5, 5), textcoords="offset points", fontsize=7, zorder=5)
        if points and max(p[0] for p in points) > 10 * min(p[0] for p in points):
            ax.set_xscale("log")
        if summary.get("proxy_limit") is not None:
            ax.axhline(summary["proxy_limit"], color="gray", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(f"top-1 error, first {summary.get('proxy_images', '?')} validation images")
    fig.suptitle("Search: every candidate (short timing), the front dashed red, confirmed on the whole split ringed "
                 "green, the budget on the subset dotted", fontsize=9)
    fig.tight_layout()
    return fig


def render_search(summary: dict, records: list[dict], folder: Path) -> list[Path]:
    """The search folder's REPORT.md and figure."""
    folder = Path(folder)
    write_text(folder / SEARCH_REPORT, "# vggtool search\n\n" + "\n\n".join(section(summary, records)) + "\n")
    _save(front_figure(records, summary), folder / SEARCH_PLOT)
    return [folder / SEARCH_REPORT, folder / SEARCH_PLOT]
