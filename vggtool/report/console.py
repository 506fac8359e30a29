"""The console tables: the bench's figures, and what a build measured."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from vggtool.report.results import ordered, upgrade
from vggtool.report.text import fmt, several_runtimes


def console_table(results: dict) -> Table:
    """The figures a reader looks for first, within 100 columns in a terminal and in a log (make, CI,
    docker: no terminal width): figure columns never wrap or shrink; the label and a failure's message
    wrap instead. Intervals, top-5 and p90 are in REPORT.md."""
    results = upgrade(results)
    size = results["settings"]["batch_size"]
    t = Table(title=f"vggtool bench: error, ms/image at batch {size} and 1 (x = speed-up over baseline), size",
              caption="b1 ms: the median of the batch-1 calls; intervals, top-5 and p90 in REPORT.md"
              + (f"; {len(results['skipped'])} not run (torch models in OpenVINO: see REPORT.md)"
                 if results["skipped"] else ""))
    extra = several_runtimes(results["rows"])  # a runtime column where a bench ran variants in several
    columns = ["variant"] + ["runtime"] * extra + ["top-1", f"b{size} ms", f"b{size} x", "b1 ms", "b1 x", "MB",
                                                   "status"]
    cells = [[r["label"]] + [r["runtime"] or "-"] * extra
             + [fmt(r["top1_err"], ".4f"), fmt(r["batch_ms"], ".2f"), fmt(r["batch_speedup"], ".2f"),
                fmt(r["b1_ms_median"], ".2f"), fmt(r["b1_speedup"], ".2f"), fmt(r["size_mb"], ".2f"), r["status"]]
             for r in ordered(results["rows"])]
    for i, c in enumerate(columns):
        widest = max([len(c)] + [len(row[i]) for row in cells])
        if c in ("variant", "status"):  # text: wraps at spaces, a word longer than the column folds
            t.add_column(c, justify="left", overflow="fold", min_width=min(widest, 12), ratio=3 if i == 0 else 1)
        else:
            t.add_column(c, justify="right", no_wrap=True, min_width=widest)
    for row in cells:
        t.add_row(*row)
    return t


def render_console(results: dict, width: int = 100) -> str:
    """The console table as a log shows it: `width` columns, no terminal, no colour."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(console_table(results))
    return console.file.getvalue()


def variant_figure_rows(metas: dict[str, dict]):
    """Columns, rows and right-justification for the figures known at build time."""
    columns = ["variant", "size MB", "file MB", "zlib MB", "zeros conv", "zeros all", "ONNX |d| / agree"]
    rows = []
    for name, meta in metas.items():
        f = meta["figures"]
        parity = f.get("parity")
        rows.append([
            name,
            fmt(f.get("size_mb"), ".2f"),
            fmt(f["file_bytes"] / 1e6, ".2f"),
            fmt(f["compressed_bytes"] / 1e6, ".2f"),
            fmt(f.get("sparsity_conv"), ".4f"),
            fmt(f.get("sparsity_conv_linear"), ".4f"),
            f"{parity['max_abs_logit_diff']:.1e} / {parity['top1_agreement']:.4f}" if parity else "-",
        ])
    return columns, rows, [False] + [True] * 5 + [False]
