"""Views of result rows: console tables, REPORT.md, comparisons and plots. Nothing here measures.

`results.json` is the single source; `results.csv`, `REPORT.md` and the PNG plots are rendered
from it, after `upgrade` has brought it to the current schema.
"""

from vggtool.bench.stats import moved, spread
from vggtool.report.compare import (
    baseline_moved,
    compare,
    comparison_lines,
    comparison_table,
    durations,
    render_comparison,
    write_comparison,
)
from vggtool.report.console import console_table, render_console, variant_figure_rows
from vggtool.report.markdown import render_markdown
from vggtool.report.plots import PLOT_SIZE, PLOT_TRADEOFF, error_vs_latency, number_points, pareto, plot, size_chart
from vggtool.report.render import REPORT_MD, publish, render_all
from vggtool.report.results import (
    PUBLISHED,
    REPORT_ORDER,
    RESULTS_CSV,
    RESULTS_JSON,
    ROW_FIELDS,
    check_writable,
    load_results,
    ordered,
    save_results,
    upgrade,
)
from vggtool.report.summary import SUMMARY_POINTS, summary

__all__ = [
    "PLOT_SIZE", "PLOT_TRADEOFF", "PUBLISHED", "REPORT_MD", "REPORT_ORDER", "RESULTS_CSV", "RESULTS_JSON", "ROW_FIELDS",
    "SUMMARY_POINTS", "baseline_moved", "check_writable", "compare", "comparison_lines", "comparison_table",
    "console_table", "durations", "error_vs_latency", "load_results", "moved", "number_points", "ordered", "pareto",
    "plot", "publish", "render_all", "render_comparison", "render_console", "render_markdown", "save_results",
    "size_chart", "spread", "summary", "upgrade", "variant_figure_rows", "write_comparison",
]
