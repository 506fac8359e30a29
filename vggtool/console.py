"""Rich rendering for the CLI: progress displays and tables built from rows."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class TrainDisplay:
    """Implements vggtool.train.Observer: a bar for the whole run and one for the epoch (on a
    terminal), a line per finished epoch with the estimated time left (everywhere: make, docker
    logs and CI see those lines), and, if asked, one early line estimating the whole run."""

    def __init__(self, console: Console, hint_total: str | None = None):
        self.console = console
        self.bar = progress(console)
        self.task = self.run_task = None
        self.hint_total = hint_total  # printed once with the projected total, e.g. "try --profile quick"
        self.started = self.first_epoch = self.epochs = self.steps = None
        self.epoch_t0 = 0.0

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def epoch_start(self, epoch, epochs, steps):
        now = time.perf_counter()
        if self.started is None:
            self.started, self.first_epoch, self.epochs, self.steps = now, epoch, epochs, steps
            self.run_task = self.bar.add_task("run", total=(epochs - epoch) * steps, info="")
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.epoch_t0 = now
        self.task = self.bar.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, info="")
        self.epoch = epoch

    def step(self, done, loss, acc, lr, images_per_s):
        self.bar.update(
            self.task,
            completed=done,
            info=f"loss {loss:.3f}  acc {acc:.3f}  lr {lr:.4f}  {images_per_s:,.0f} img/s",
        )
        self.bar.update(self.run_task, completed=(self.epoch - self.first_epoch) * self.steps + done)
        if self.hint_total and self.epoch == self.first_epoch and done >= min(11, self.steps):
            per_step = (time.perf_counter() - self.epoch_t0) / done
            total = per_step * self.steps * (self.epochs - self.first_epoch)
            self.console.print(f"estimated time for {self.epochs - self.first_epoch} epochs at this pace: "
                               f"{_duration(total)}; {self.hint_total}")
            self.hint_total = None

    def epoch_end(self, record):
        self.bar.update(self.task, completed=self.bar.tasks[0].total)
        val = record["val_top1_err"]
        done = record["epoch"] + 1 - self.first_epoch
        left = (time.perf_counter() - self.started) / done * (self.epochs - record["epoch"] - 1)
        self.console.print(
            f"epoch {record['epoch'] + 1}/{self.epochs}: loss {record['train_loss']:.3f}  "
            f"train acc {record['train_acc']:.3f}  "
            + (f"val top-1 err {val:.4f}  " if val is not None else "")
            + f"{record['images_per_s']:,.0f} img/s  {record['seconds']:.0f}s  "
            + (f"left ~{_duration(left)}" if left > 0 else "done")
        )


def tuning_display(console: Console, status):
    """For fine-tuning inside a `console.status` spinner: a context manager factory that pauses the
    spinner while a TrainDisplay shows the epochs' bars and lines."""
    from contextlib import contextmanager

    @contextmanager
    def display():
        status.stop()
        try:
            with TrainDisplay(console) as shown:
                yield shown
        finally:
            status.start()

    return display


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence], justify_right: Sequence[bool] | None = None) -> Table:
    rows = [[str(v) for v in r] for r in rows]
    t = Table(title=title)
    figures = bool(justify_right and any(justify_right))
    for i, c in enumerate(columns):
        if i == 0:  # names whole on one line; in a table of figures a long one folds, so no figure is cut
            longest = max([len(c)] + [len(r[0]) for r in rows])
            first = {"overflow": "fold", "min_width": min(longest, 22), "max_width": 22} if figures else {
                "no_wrap": True, "min_width": longest}
        else:
            first = {"overflow": "fold"} if figures else {}
        t.add_column(c, justify="right" if (justify_right and justify_right[i]) else "left", **first)
    for r in rows:
        t.add_row(*r)
    return t


class BenchDisplay:
    """The rows measured so far (`render(rows)`, e.g. the report's console table) above a progress
    bar. Redrawn only from the bench's callbacks, which never run inside a timed block: an
    auto-refresh thread would take CPU from the pinned cores in the middle of the timed calls."""

    def __init__(self, console: Console, render):
        from rich.live import Live

        self.render, self.rows, self.bar = render, {}, progress(console)
        self.task = self.bar.add_task("bench", total=None, info="")
        self.live = Live(self._view(), console=console, auto_refresh=False, transient=True)
        self.shown_at, self.message = 0.0, ""

    def _view(self):
        from rich.console import Group

        return Group(self.render(list(self.rows.values())), self.bar)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        return self.live.__exit__(*exc)

    def _redraw(self, message: str | None = None, force: bool = False) -> None:
        now = time.monotonic()
        if force or message != self.message or now - self.shown_at >= 0.25:
            self.live.update(self._view(), refresh=True)
            self.shown_at, self.message = now, message

    def on_progress(self, message: str, step: float, steps: int) -> None:
        self.bar.update(self.task, completed=step, total=steps, info=message)
        self._redraw(message)

    def on_row(self, row: dict) -> None:
        self.rows[row["variant"]] = row
        self._redraw(force=True)


class SearchDisplay:
    """`vggtool search`'s progress: a bar over the time budget (on a terminal), a line per finished step
    (everywhere), the fine-tuning bars in between."""

    def __init__(self, console: Console, budget_seconds: float):
        self.console = console
        self.bar = progress(console)
        self.task = self.bar.add_task("budget (s)", total=round(budget_seconds), info="")

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def on_step(self, record: dict, spent: float, budget: float) -> None:
        self.bar.update(self.task, completed=min(round(spent), round(budget)), info=record["key"])
        names = {"val_err_proxy": "err (subset) {:.4f}", "val_err": "err {:.4f}", "b1_ms": "b1 {:.3f} ms",
                 "batch_ms": "b16 {:.3f} ms", "size_mb": "{:.2f} MB"}
        figures = [text.format(record[k]) for k, text in names.items() if k in record]
        note = record.get("failed") or record.get("skipped") or "  ".join(figures)
        key = f"baseline and {len(record.get('rows', {})) - 1} confirmed" if record["stage"] == "bench" else record["key"]
        self.console.print(f"[{_duration(spent)}/{_duration(budget)}] {record['stage']:<7} {key}: {note}"
                           + (f"  ({record['seconds']:.0f} s)" if record.get("seconds") else ""))
