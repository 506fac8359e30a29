"""Writing a report: results, REPORT.md and plots into a folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from vggtool.files import remove_stale_temporaries, write_text
from vggtool.report.markdown import render_markdown
from vggtool.report.plots import plot
from vggtool.report.results import RESULTS_CSV, RESULTS_JSON, load_results, save_results, upgrade

REPORT_MD = "REPORT.md"


def render_all(results: dict, folder: Path, copy_to: Path | None = None, search_dir: Path | None = None) -> list[Path]:
    """REPORT.md and plots from `results`; optionally copied to another folder too, with the files of the search
    (`search_dir`) whose choice the results measured, into its search/."""
    folder = Path(folder)
    results = upgrade(results)
    remove_stale_temporaries(folder)  # what a killed bench or report left under temporary names
    write_text(folder / REPORT_MD, render_markdown(results))
    written = [folder / REPORT_MD, *plot(results, folder)]
    if copy_to is not None:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        for path in written + [folder / RESULTS_JSON, folder / RESULTS_CSV]:
            if path.exists():
                shutil.copyfile(path, Path(copy_to) / path.name)
        searched = Path(search_dir) if search_dir is not None and results.get("search") else None
        if searched is not None and searched.is_dir():  # the search whose choice the bench measured: its files
            (Path(copy_to) / "search").mkdir(exist_ok=True)
            for name in ("search.jsonl", "search.json", "REPORT.md", "search_front.png"):
                if (searched / name).exists():
                    shutil.copyfile(searched / name, Path(copy_to) / "search" / name)
    return written


def publish(results: dict, folder: Path, copy_to: Path | None = None) -> list[Path]:
    """Write results.json and results.csv, then render REPORT.md and the plots from the file just written (so
    that `vggtool report` renders the same REPORT.md again); returns the paths written."""
    saved = save_results(results, folder)
    return saved + render_all(load_results(folder), folder, copy_to)
