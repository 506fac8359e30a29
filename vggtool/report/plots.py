"""The two figures: error against latency, and size per variant.

With 20 and more variants, names beside the points cannot all be kept apart. So each point
gets its number (the row's place in REPORT.md's tables and its "Variant names" key), the
figure lists every number with its label on the right, the Pareto front in bold, and points
whose numbers would touch share one label ("3, 7, 12"): no label covers another.
"""

from __future__ import annotations

import io
from pathlib import Path

from vggtool.files import write_bytes
from vggtool.report.results import ordered, upgrade

PLOT_TRADEOFF, PLOT_SIZE = "error_vs_latency.png", "size.png"
DPI = 110
FONT_PT = 7.5
LINE_IN = 0.16  # vertical room per line of the key on the right, inches
WIDTH_IN = 10.0
GAP_PX = 3  # kept clear around each number label


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
    """Each variant's batched latency interval: the bootstrap interval where the bench drew one,
    else the lowest and highest per-round figure."""
    spans = {}
    for r in ok:
        for lo, hi in (("batch_ms_lo", "batch_ms_hi"), ("batch_ms_min", "batch_ms_max")):
            if r[lo] is not None and r[hi] is not None:
                spans[r["label"]] = (r[lo], r[hi])
                break
    return spans


def _figure(height_in: float, width_in: float = 7.0):
    # A bare Figure on the Agg canvas: no pyplot state, no GUI backend, nothing to close.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def error_vs_latency(results: dict):
    """The trade-off figure and its number labels (returned so that their placement can be checked)."""
    ok = [r for r in ordered(upgrade(results)["rows"]) if r["status"] == "ok"]
    points = [(r["batch_ms"], r["top1_err"], r["label"]) for r in ok]
    spans = latency_spans(ok)
    height = max(4.5, 1.2 + LINE_IN * len(points))
    fig, ax = _figure(height, WIDTH_IN)
    xs, ys = [x for x, _, _ in points], [y for _, y, _ in points]
    ax.scatter(xs, ys, s=14, zorder=3)
    if spans:
        ax.errorbar(xs, ys, fmt="none", ecolor="tab:blue", elinewidth=1, capsize=3,
                    xerr=[[max(0.0, x - spans.get(n, (x, x))[0]) for x, _, n in points],
                          [max(0.0, spans.get(n, (x, x))[1] - x) for x, _, n in points]])
    front = pareto(points, spans)
    ax.plot([p[0] for p in front], [p[1] for p in front], "r--o", mfc="none", ms=9)
    if xs and max(xs) > 10 * min(xs):  # a linear axis would crowd the fast variants against 0
        from matplotlib.ticker import LogLocator

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # decades alone leave few ticks to read values by
        ax.xaxis.set_major_formatter("{x:g}")
    ax.set_xlabel(f"ms / image (batch {results['settings']['batch_size']})")
    ax.set_ylabel("top-1 error")
    ax.ticklabel_format(axis="y", useOffset=False)  # errors all near one value must not read as "+9.9e-1"
    ax.set_title("Error vs latency (red: the Pareto front, in bold in the key)")
    fig.subplots_adjust(left=0.08, right=0.58, bottom=0.6 / height, top=1 - 0.45 / height)
    on_front = {p[2] for p in front}
    for i, (_, _, name) in enumerate(points):  # the key: one line each, top down
        fig.text(0.61, 1 - (0.45 + (i + 0.5) * LINE_IN) / height, f"{i + 1:>2}  {name}", fontsize=FONT_PT,
                 va="center", family="monospace", fontweight="bold" if name in on_front else "normal")
    return fig, number_points(ax, points)


def number_points(ax, points: list[tuple[float, float, str]]) -> list:
    """Each point's number just above and right of it; points whose numbers would touch share one label,
    placed at the highest of them, until no two labels touch."""
    ax.figure.canvas.draw()  # settles the limits and layout the numbers are placed in
    renderer = ax.figure.canvas.get_renderer()
    at = ax.transData.transform([(x, y) for x, y, _ in points]) if points else []
    groups = [[i] for i in range(len(points))]
    while True:
        labels = []
        for group in groups:
            top = max(group, key=lambda i: (at[i][1], at[i][0]))
            labels.append(ax.annotate(", ".join(str(i + 1) for i in group), points[top][:2], xytext=(3, 3),
                                      textcoords="offset points", fontsize=FONT_PT - 0.5))
        boxes = [label.get_window_extent(renderer).extents + (-GAP_PX, -GAP_PX, GAP_PX, GAP_PX) for label in labels]
        touching = next(((a, b) for a in range(len(boxes)) for b in range(a + 1, len(boxes))
                         if _overlap(boxes[a], boxes[b])), None)
        if touching is None:
            return labels
        for label in labels:
            label.remove()
        a, b = touching
        groups[a] = sorted(groups[a] + groups.pop(b))


def _overlap(a, b) -> bool:
    """Whether two boxes (x0, y0, x1, y1) share any area."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def size_chart(results: dict):
    rows = [r for r in ordered(upgrade(results)["rows"]) if r["status"] == "ok"]
    fig, ax = _figure(max(4.5, 1.2 + 0.22 * len(rows)), 8.0)
    labels = [r["label"] for r in rows]
    ax.barh(labels, [r["size_mb"] for r in rows], label="size (MB)")
    ax.barh(labels, [r["compressed_mb"] for r in rows], alpha=0.6, label="zlib-compressed file")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=FONT_PT)
    ax.set_xlabel("MB")
    ax.set_title("Model size per variant")
    ax.legend(fontsize=FONT_PT)
    fig.tight_layout()
    return fig


def plot(results: dict, folder: Path) -> list[Path]:
    """Both figures as PNGs in `folder`; returns their paths."""
    out = [Path(folder) / PLOT_TRADEOFF, Path(folder) / PLOT_SIZE]
    _save(error_vs_latency(results)[0], out[0])
    _save(size_chart(results), out[1])
    return out


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())
