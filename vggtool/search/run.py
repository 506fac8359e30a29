"""A search tied to a run: its folder, its files, and what a bench reads of it."""

from __future__ import annotations

from pathlib import Path

from vggtool.bench.env import environment
from vggtool.errors import VggtoolError
from vggtool.files import read_json, write_json
from vggtool.search.engine import SEARCH_LOG, Log, Search
from vggtool.search.measure import RunMeasure, SearchData
from vggtool.search.space import Request

SEARCH_DIR, SUMMARY = "search", "search.json"


def search_run(run, data_dir: Path, request: Request, threads: int = 0, on_step=None, display=None,
               data: SearchData | None = None) -> dict:
    """Search a run's chains as `request` says; search.jsonl, search.json, REPORT.md and the front's plot go into
    the run's search folder (a rerun resumes from search.jsonl). Returns the summary."""
    from vggtool.report.search import render_search

    if threads:  # torch's own pool too, as ONNX Runtime's and OpenVINO's get `threads`
        import torch

        torch.set_num_threads(threads)
    folder = run.path / SEARCH_DIR
    data = data or SearchData(run, data_dir)
    if len(data.val) == 0:
        raise VggtoolError(f"{run.path} has no validation split (val_size 0): a search chooses on it, never on test")
    log = Log(folder / SEARCH_LOG)
    summary = Search(request, RunMeasure(run, data, request.space, threads, display), log, on_step=on_step).run()
    reads = sum(r.get("stage") == "test" and "test" in r for r in log.records)  # each test record: one read
    summary.update(environment=environment(), test_reads=reads, run=run.path.name,
                   runtimes=list(request.space.runtimes))
    write_json(folder / SUMMARY, summary)
    render_search(summary, log.records, folder)
    return summary


def searched(run) -> dict | None:
    """A run's search, where it has one: its summary, and the variants it chose (the chosen, and the first found
    within budget), by variant name."""
    path = run.path / SEARCH_DIR / SUMMARY
    if not path.exists():
        return None
    summary = read_json(path, "search summary")
    picks = [summary.get(k) for k in ("chosen", "first")]
    return {"summary": summary, "variants": list(dict.fromkeys(p["candidate"]["name"] for p in picks if p))}
