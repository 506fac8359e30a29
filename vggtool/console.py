"""Rich rendering for the CLI: progress displays and tables built from rows."""

from __future__ import annotations

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


class TrainDisplay:
    """Implements vggtool.train.Observer: one progress bar per epoch and a line per finished epoch."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = progress(console)
        self.task = None

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def epoch_start(self, epoch, epochs, steps):
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, info="")

    def step(self, done, loss, acc, lr, images_per_s):
        self.bar.update(
            self.task,
            completed=done,
            info=f"loss {loss:.3f}  acc {acc:.3f}  lr {lr:.4f}  {images_per_s:,.0f} img/s",
        )

    def epoch_end(self, record):
        self.bar.update(self.task, completed=self.bar.tasks[0].total)
        val = record["val_top1_err"]
        self.console.print(
            f"epoch {record['epoch'] + 1}: loss {record['train_loss']:.3f}  "
            f"train acc {record['train_acc']:.3f}  "
            + (f"val top-1 err {val:.4f}  " if val is not None else "")
            + f"{record['images_per_s']:,.0f} img/s  {record['seconds']:.0f}s"
        )


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence], justify_right: Sequence[bool] | None = None) -> Table:
    rows = [[str(v) for v in r] for r in rows]
    t = Table(title=title)
    for i, c in enumerate(columns):
        first = {"no_wrap": True, "min_width": max([len(c)] + [len(r[0]) for r in rows])} if i == 0 else {}
        t.add_column(c, justify="right" if (justify_right and justify_right[i]) else "left", **first)
    for r in rows:
        t.add_row(*r)
    return t
