"""`vggtool search`, a command of the `vggtool` group (cli.py adds it)."""

from __future__ import annotations

import click

from vggtool.options import data_dir_option, run_dir_option
from vggtool.search.names import OBJECTIVES, RUNTIMES


@click.command(name="search")
@click.option("--max-drop", default="1.0", show_default=True,
              help="Most top-1 points the chosen variant may lose on the validation split.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="b1", show_default=True,
              help="What to minimise: ms/image at batch 1, at batch 16, or MB stored.")
@click.option("--runtime", "runtimes", multiple=True, type=click.Choice(RUNTIMES),
              help="Where candidates may run (repeatable) [every one installed].")
@click.option("--budget-minutes", type=float, default=None, help="Time to spend, fine-tuning included [120; --quick 20].")
@click.option("--quick", is_flag=True, help="The quick profile: 5 epochs per pruned parent, shorter timings.")
@click.option("--threads", type=int, default=0, help="Threads of every runtime (0 = its default).")
@data_dir_option
@run_dir_option
def search(max_drop, objective, runtimes, budget_minutes, quick, threads, data_dir, run_dir):
    """The fastest chain within an accuracy budget: structured ratios (distilled), quantizers, runtimes,
    float layers and weight sharing, on measured latency. Chosen on validation; test read once, after.
    A rerun resumes <run>/search/search.jsonl; its REPORT.md names the choice and why.

    \b
      vggtool search --max-drop 1.0                      # 120 minutes, the fastest at batch 1
      vggtool search --quick --objective batch           # 20 minutes
    """
    from vggtool.cli import console
    from vggtool.console import SearchDisplay, table, tuning_display
    from vggtool.paths import default_data_dir
    from vggtool.report.search import label
    from vggtool.runs import Run
    from vggtool.search import Request, SearchSpace, check_request, default_runtimes, search_run
    from vggtool.search.space import request_space

    runtimes = tuple(runtimes) or default_runtimes()
    drop = check_request(objective, runtimes, max_drop)
    budget = budget_minutes if budget_minutes is not None else (20.0 if quick else 120.0)
    if not 0 < budget < float("inf") or threads < 0:
        raise click.UsageError("--budget-minutes must be a positive number of minutes and --threads >= 0")
    run = Run.open(run_dir)
    run.baseline_file()  # a run without a baseline: said before anything starts
    request = Request(drop, objective, budget, request_space(SearchSpace(runtimes=runtimes), quick))
    log = run.path / "search" / "search.jsonl"
    if log.exists():
        console.print(f"resuming {log}: {sum(1 for _ in log.open())} lines; finished steps are not measured again")
    with SearchDisplay(console, 60 * budget) as shown:
        summary = search_run(run, data_dir or default_data_dir(), request, threads, shown.on_step,
                             tuning_display(console, shown.bar))
    chosen, first = summary.get("chosen"), summary.get("first")
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    rows = [[what, label(r["key"]), fmt(r["val_err"], ".4f"), fmt(r.get("test_err"), ".4f"), fmt(r.get("b1_speedup"), ".2f"),
             fmt(r.get("batch_speedup"), ".2f"), fmt(r["size_mb"], ".2f")]
            for what, r in (("chosen", chosen), ("first within", first)) if r]
    console.print(table(f"search: {summary['candidates']} candidates in {summary['seconds'] / 60:.1f} min",
                        ["", "variant", "val err", "test err", "b1 speed-up (x)", "b16 speed-up (x)", "MB"], rows))
    console.print(f"chosen: {chosen['key']}: {summary['why']}" if chosen else f"nothing chosen: {summary['why']}")
    if first:
        console.print(f"first within the budget: {first['key']}")
    console.print(f"wrote {run.path / 'search'}/search.jsonl, search.json, REPORT.md, search_front.png")
