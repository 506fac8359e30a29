"""Two benches side by side: how far each speed-up moved, as data, markdown and a console table."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from vggtool.bench.stats import moved
from vggtool.errors import VggtoolError
from vggtool.files import write_text
from vggtool.report.results import ordered, upgrade
from vggtool.report.text import md_table

SETTINGS_COMPARED = ("batch_size", "protocol", "threads", "cpus", "latency_images")


def compare(first: dict, second: dict) -> dict:
    """Two benches of the same variants side by side: each speed-up in both, how far it moved
    (relative to the pair's mean) and whether the two intervals overlap; the largest moves."""
    first, second = upgrade(first), upgrade(second)
    a = {r["variant"]: r for r in ordered(first["rows"]) if r["status"] == "ok"}
    b = {r["variant"]: r for r in ordered(second["rows"]) if r["status"] == "ok"}
    shared = [n for n in a if n in b and a[n]["batch_speedup"] is not None and b[n]["batch_speedup"] is not None]
    if not shared:
        raise VggtoolError("the two results share no measured variant with speed-ups: nothing to compare")

    def overlap(x, y, kind):
        lo, hi = f"{kind}_speedup_lo", f"{kind}_speedup_hi"
        if None in (x[lo], x[hi], y[lo], y[hi]):
            return None
        return x[lo] <= y[hi] and y[lo] <= x[hi]

    variants = {n: {"label": a[n]["label"],
                    **{f"{k}_speedup": [a[n][f"{k}_speedup"], b[n][f"{k}_speedup"]] for k in ("batch", "b1")},
                    **{f"{k}_overlap": overlap(a[n], b[n], k) for k in ("batch", "b1")}} for n in shared}
    envs = (first["environment"], second["environment"])
    return {"variants": variants,
            "batch_speedup_max_rel_diff": max(moved(v["batch_speedup"]) for v in variants.values()),
            "b1_speedup_max_rel_diff": max(moved(v["b1_speedup"]) for v in variants.values()),
            "dates": [e["date"] for e in envs],
            "cpu_flags": [e["cpu_flags"] for e in envs],
            "bench_seconds": [e["bench_seconds"] for e in envs],
            "rounds": [max((r["rounds"] or 0 for r in x["rows"]), default=0) for x in (first, second)],
            "baseline_ms": _baseline_ms(a.get("baseline"), b.get("baseline")),
            "skipped": sorted(set(a) ^ set(b)),
            "settings_differ": [k for k in SETTINGS_COMPARED if first["settings"][k] != second["settings"][k]]}


def _baseline_ms(x: dict | None, y: dict | None) -> dict | None:
    """The baseline's own ms in both benches (batch, batch 1), where both measured it."""
    if x is None or y is None:
        return None
    ms = {k: [x[f], y[f]] for k, f in (("batch", "batch_ms"), ("b1", "b1_ms_median"))}
    return ms if None not in ms["batch"] + ms["b1"] else None


def baseline_moved(cmp: dict) -> str:
    """How far the baseline's own time moved between the benches (the machine's speed, or state
    the process kept: the move alone does not say which); a speed-up cancels such a move only
    where it changed both of its variants' times alike."""
    ms = cmp["baseline_ms"]
    if not ms:
        return ""
    return (f"The baseline's own time moved {100 * moved(ms['batch']):.1f}% in batches ({ms['batch'][0]:.3f} / "
            f"{ms['batch'][1]:.3f} ms per image) and {100 * moved(ms['b1']):.1f}% at batch 1 ({ms['b1'][0]:.3f} / "
            f"{ms['b1'][1]:.3f} ms); a speed-up cancels such a move only where it changed both variants' times "
            "alike.")


def durations(cmp: dict) -> str:
    """How long each bench took and how many rounds it timed, where its results.json says so
    ("?" where it does not)."""
    secs, rounds = cmp["bench_seconds"], cmp["rounds"]
    said = []
    if any(s is not None for s in secs):
        said.append("took " + " and ".join("?" if s is None else f"{s:.0f} s" for s in secs)
                    + " (data, loading, scoring and timing; not the interpreter's start)")
    if any(rounds):
        said.append("timed " + " and ".join(str(r or "?") for r in rounds) + " rounds")
    return "The benches " + "; they ".join(said) + "." if said else ""


def _cell(v: dict, kind: str, unit: str = "x") -> str:
    pair = v[f"{kind}_speedup"]
    return f"{pair[0]:.2f}{unit} / {pair[1]:.2f}{unit} ({100 * moved(pair):.1f}%)"


def render_comparison(cmp: dict, names: tuple[str, str]) -> str:
    """`vggtool compare` as markdown: every figure in it comes from the two results.json."""
    took, drift = durations(cmp), baseline_moved(cmp)

    def cell(v, k):
        return _cell(v, k) + (", intervals apart" if v[f"{k}_overlap"] is False else "")

    rows = [[v["label"], cell(v, "batch"), cell(v, "b1")] for v in cmp["variants"].values()]
    flags = " / ".join(sorted(set(f or "?" for f in cmp["cpu_flags"])))
    parts = ["# Two benches compared",
             f"`{names[0]}` ({cmp['dates'][0]}) against `{names[1]}` ({cmp['dates'][1]}); CPU flags: `{flags}`. "
             "Rendered by `vggtool compare` from the two results.json." + (" " + took if took else ""),
             f"Largest difference between the two benches' speed-ups: **{100 * cmp['batch_speedup_max_rel_diff']:.1f}% "
             f"(batch)**, **{100 * cmp['b1_speedup_max_rel_diff']:.1f}% (batch 1)**, relative to the pair's mean. "
             "A pair whose 95% intervals do not overlap is marked \"intervals apart\"." + (" " + drift if drift else ""),
             md_table(["Variant", "Speed-up batch, first / second (moved)", "Speed-up b1, first / second (moved)"],
                      rows, ["-", ":-:", ":-:"])]
    if cmp["settings_differ"]:
        parts.append("The two benches differ in settings (" + ", ".join(f"`{k}`" for k in cmp["settings_differ"])
                     + "): part of the difference is theirs, not noise.")
    if cmp["skipped"]:
        parts.append("Measured in only one of them (not compared): " + ", ".join(f"`{n}`" for n in cmp["skipped"]))
    parts += ["Variant names (the first bench's labels):",
              md_table(["Label", "Variant"], [[v["label"], f"`{n}`"] for n, v in cmp["variants"].items()], ["-", "-"])]
    return "\n\n".join(parts) + "\n"


def comparison_table(cmp: dict) -> Table:
    """The speed-ups of both benches, for the console: figures whole, labels wrapping."""
    t = Table(title="speed-ups over baseline: first / second (moved)")
    t.add_column("variant", overflow="fold", min_width=12)
    for c in ("batch", "b1"):
        t.add_column(c, justify="right", no_wrap=True)
    for v in cmp["variants"].values():
        t.add_row(v["label"], _cell(v, "batch", ""), _cell(v, "b1", ""))
    return t


def comparison_lines(cmp: dict) -> list[str]:
    """What `vggtool compare` says under its table: the largest moves, durations, the baseline's own move."""
    lines = [f"largest difference: {100 * cmp['batch_speedup_max_rel_diff']:.1f}% (batch), "
             f"{100 * cmp['b1_speedup_max_rel_diff']:.1f}% (batch 1)"]
    lines += [said for said in (durations(cmp), baseline_moved(cmp)) if said]
    if cmp["settings_differ"]:
        lines.append("the two benches differ in " + ", ".join(cmp["settings_differ"]) + ": not only noise")
    return lines


def write_comparison(cmp: dict, names: tuple[str, str], path: Path) -> None:
    """The comparison as markdown in `path`; never over a results.json."""
    path = Path(path)
    if path.name == "results.json":
        raise VggtoolError(f"--write {path}: refusing to write markdown over a results.json; name it e.g. SPREAD.md")
    try:
        write_text(path, render_comparison(cmp, names))
    except OSError as e:
        raise VggtoolError(f"cannot write {path}: {e.strerror or e}") from None
