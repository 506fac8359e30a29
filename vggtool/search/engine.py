"""The search itself, over an injected `Measure` and clock (tests give it a fake of both).

Stages, cheap to dear: every way to deploy the baseline on a validation subset with a short timing; structured
ratios searched from the middle outwards (each a distilled fine-tune, the dear part), every way to deploy each
parent that stays within the budget; the layers that lose most kept in float where plain int8 misses; weight
sharing where size is the goal. The candidates nearest the front then get the full validation split and one
interleaved bench timing; the choice is made on those, and only then is the test split read, once.

Every finished step is a line of search.jsonl (`Log`): a rerun reads it back and repeats none of them, and as the
decisions depend only on what was recorded, a search killed anywhere and rerun makes the same choice.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from vggtool.errors import VggtoolError
from vggtool.report.plots import pareto
from vggtool.search.space import BASELINE, OBJECTIVE_FIELDS, Candidate, Request

SEARCH_LOG = "search.jsonl"


class Measure(Protocol):
    """What the search measures; `vggtool.search.measure.RunMeasure` measures a run's variants."""

    def cost(self, c: Candidate) -> float: ...  # estimated seconds to build `c` and take its proxies
    def figures(self, c: Candidate) -> dict: ...  # builds every missing step; size_mb, macs, params
    def error(self, c: Candidate, images: int) -> float: ...  # validation top-1 error, first `images` (0: all)
    def timing(self, c: Candidate, seconds: float) -> dict: ...  # b1_ms, batch_ms: a short timing of `c` alone
    def bench(self, cs: list[Candidate], seconds: float) -> dict: ...  # key -> ms and speed-ups, interleaved
    def ranking(self, parent: Candidate) -> list[str]: ...  # weight layers, the one int8 costs most first
    def test_errors(self, cs: list[Candidate]) -> dict: ...  # key -> test top-1 error: the one read of test


class Log:
    """search.jsonl: one JSON line per finished step, flushed as it is written; a rerun reads it back (a line cut
    off by a kill is dropped) and finds each step by stage and key."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records = self.read()
        self.done = {(r["stage"], r["key"]): r for r in self.records if "key" in r and "skipped" not in r}
        self.before = sum(r.get("seconds", 0.0) for r in self.records)  # spent by earlier runs of this search

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        whole, _, cut = text.rpartition("\n")
        if cut:  # the line a kill cut off: dropped from the file too, so the next line starts clean
            with open(self.path, "r+", encoding="utf-8") as f:
                f.truncate(len((whole + "\n").encode()) if whole else 0)
        try:
            return [json.loads(line) for line in whole.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise VggtoolError(f"{self.path} is damaged ({e}); remove it to search afresh") from None

    def add(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
        self.records.append(record)
        if "key" in record and "skipped" not in record:
            self.done[(record["stage"], record["key"])] = record


OnStep = Callable[[dict, float, float], None]  # (record, seconds spent, seconds of budget)


class Search:
    def __init__(self, request: Request, measure: Measure, log: Log, clock: Callable[[], float] = time.monotonic,
                 on_step: OnStep | None = None):
        self.request, self.space, self.measure, self.log = request, request.space, measure, log
        self.clock, self.on_step = clock, on_step or (lambda record, spent, budget: None)
        self.budget = 60.0 * request.budget_minutes
        self.started = clock()
        self.order: list[Candidate] = []  # the candidates in the order they were explored
        self.reserve = 0.0  # seconds kept for confirming and the bench, known once the baseline is measured

    # ------------------------------------------------------------ bookkeeping
    def spent(self) -> float:
        return self.log.before + self.clock() - self.started

    def step(self, stage: str, c: Candidate, work: Callable[[], dict], estimate: float = 0.0,
             reserve: bool = True) -> dict | None:
        """A finished step's record, from the log where a run before this one finished it, else measured now
        (a candidate that fails to build or run is recorded as failed: the search goes on); None (and a
        "skipped" line) where its estimate no longer fits in the budget, less what the choice needs (`reserve`)."""
        done = self.log.done.get((stage, c.key))
        if done is not None:
            return done
        if self.spent() + estimate + (self.reserve if reserve else 0.0) > self.budget:
            record = {"stage": stage, "key": c.key, "skipped": f"over budget (about {estimate:.0f} s left to spend "
                                                               f"{max(0.0, self.budget - self.spent()):.0f} s)"}
            self.log.add({**record, "seconds": 0.0})
            self.on_step(record, self.spent(), self.budget)
            return None
        start = self.clock()
        try:
            figures = work()
        except Exception as e:  # one candidate that cannot be built or run here (not a kill: that is no Exception)
            figures = {"failed": str(e).splitlines()[0] if str(e) else type(e).__name__}
        record = {"stage": stage, "key": c.key, "candidate": c.to_dict(), **figures, "seconds": self.clock() - start}
        self.log.add(record)
        self.on_step(record, self.spent(), self.budget)
        return record

    def proxy(self, c: Candidate) -> dict | None:
        images, seconds = self.space.proxy_images, self.space.proxy_seconds
        rec = self.step("proxy", c, lambda: {**self.measure.figures(c), "val_err_proxy": self.measure.error(c, images),
                                             **self.measure.timing(c, seconds)}, self.measure.cost(c))
        if rec is None or "failed" in rec:
            return None
        if c not in self.order:
            self.order.append(c)
        return rec

    # ------------------------------------------------------------ the stages
    def run(self) -> dict:
        if not self.log.records:  # a fresh search: refuse a budget that buys nothing before writing anything
            one = self.measure.cost(BASELINE) + self.measure.cost(self.space.deployed(())[0])
            if one > self.budget:
                raise VggtoolError(f"a budget of {self.request.budget_minutes:g} min is too small: the baseline and one "
                                   f"candidate take about {one / 60:.1f} min here; give --budget-minutes "
                                   f"{math.ceil(one / 60)} or more")
        base = self.proxy(BASELINE)
        base_full = self.step("confirm", BASELINE, lambda: {"val_err": self.measure.error(BASELINE, 0)},
                              reserve=False)
        if base is None or base_full is None or "failed" in base_full:
            why = (base_full or {}).get("failed", "the budget ran out first")
            raise VggtoolError(f"the baseline could not be measured: {why}")
        # what confirming takes (the full split, for each candidate confirmed and the first within the budget)
        self.reserve = (self.space.confirm + 1) * base_full["seconds"] + self.space.confirm_seconds
        self.limit = base_full["val_err"] + self.request.drop  # full validation split
        n = self.space.proxy_images or 0
        p = base["val_err_proxy"]
        margin = math.sqrt(max(p * (1 - p), 1e-4) / n) if n else 0.0  # one standard error of a subset's error
        self.proxy_limit = base["val_err_proxy"] + self.request.drop + margin
        parents = [()]
        self.deploy(())
        for parent in self.prune():
            parents.append(parent)
        for parent in parents:
            self.keep_float(parent)
            if self.request.objective == "size":
                for c in self.space.shared(parent):
                    self.proxy(c)
        return self.choose(base_full)

    def deploy(self, parent: tuple) -> None:
        for c in self.space.deployed(parent):
            self.proxy(c)

    def prune(self):
        """Structured ratios by bisection: the largest whose distilled float parent stays within the budget on
        the full validation split (each one tried is a fine-tune); yields each parent that does, deployed."""
        amounts = sorted(self.space.amounts)
        lo, hi = -1, len(amounts)
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            parent = self.space.pruned_parent(amounts[mid])
            c = Candidate(parent, "torch")
            reserve = sum(self.measure.cost(d) for d in self.space.deployed(parent))
            rec = self.step("parent", c, lambda c=c: {**self.measure.figures(c), "val_err": self.measure.error(c, 0)},
                            self.measure.cost(c) + reserve)
            if rec is None:
                return
            if "failed" not in rec and rec["val_err"] <= self.limit:
                lo = mid
                self.deploy(parent)
                yield parent
            else:
                hi = mid

    def keep_float(self, parent: tuple) -> None:
        """Where int8 of a parent misses the budget on the subset but the parent does not: the layers that lose
        most kept in float (a sensitivity scan of the parent, then fewer layers quantized)."""
        proxies = {c.key: self.log.done.get(("proxy", c.key)) for c in self.space.deployed(parent)}
        own = self.log.done.get(("proxy", (Candidate(parent, "torch") if parent else BASELINE).key))
        if own is None or own.get("val_err_proxy", math.inf) > self.proxy_limit:
            return
        parent_c = Candidate(parent, "torch") if parent else BASELINE
        missed = [c for c in self.space.deployed(parent) if self.space.can_keep_float(c)
                  and proxies.get(c.key) and proxies[c.key].get("val_err_proxy", 0.0) > self.proxy_limit]
        if not missed:
            return
        parent_full = self.log.done.get(("parent", parent_c.key)) or self.log.done.get(("confirm", parent_c.key))
        slack = self.limit - parent_full["val_err"]
        scan = self.step("scan", parent_c, lambda: {"ranking": self.measure.ranking(parent_c)},
                         self.measure.cost(parent_c))
        if scan is None or "failed" in scan:
            return
        for c in missed:
            for kept in self.space.kept_float(c, scan["ranking"], slack):
                self.proxy(kept)

    # ------------------------------------------------------------ the choice
    def within_proxy(self) -> list[dict]:
        return [self.log.done[("proxy", c.key)] for c in self.order if c != BASELINE
                and self.log.done[("proxy", c.key)]["val_err_proxy"] <= self.proxy_limit]

    def confirm(self, c: Candidate) -> dict | None:
        """The full validation split: within the reserve kept for it."""
        rec = self.step("confirm", c, lambda: {"val_err": self.measure.error(c, 0)}, reserve=False,
                        estimate=self.log.done[("confirm", BASELINE.key)]["seconds"])
        return None if rec is None or "failed" in rec else rec

    def choose(self, base_full: dict) -> dict:
        field = OBJECTIVE_FIELDS[self.request.objective]
        near = self.within_proxy()
        ranked = sorted(near, key=lambda r: (r[field], r["val_err_proxy"]))
        confirmed: list[dict] = []
        for r in ranked:  # nearest the front first, until enough stay within the budget on the full split
            if len(confirmed) == self.space.confirm:
                break
            rec = self.confirm(Candidate.from_dict(r["candidate"]))
            if rec is not None and rec["val_err"] <= self.limit:
                confirmed.append(rec)
        first = None
        for r in near:  # what stopping at the first model within the loss would have given, in exploration order
            rec = self.confirm(Candidate.from_dict(r["candidate"]))
            if rec is not None and rec["val_err"] <= self.limit:
                first = rec
                break
        timed = [Candidate.from_dict(r["candidate"]) for r in confirmed + ([first] if first else [])]
        timed = list(dict.fromkeys([BASELINE, *timed]))
        # the one bench of the confirmed (always run: the reserve kept its time)
        bench = self.step("bench", BASELINE, lambda: {"rows": self.measure.bench(timed, self.space.confirm_seconds)},
                          reserve=False) if len(timed) > 1 else None
        rows = bench.get("rows", {}) if bench else {}

        def value(rec: dict) -> float:
            proxy = self.log.done[("proxy", rec["key"])]
            return proxy["size_mb"] if field == "size_mb" else rows.get(rec["key"], {}).get(field, math.inf)

        chosen = min(confirmed, key=lambda rec: (value(rec), rec["val_err"])) if confirmed and rows else None
        summary = {"request": {"max_drop": self.request.max_drop, "objective": self.request.objective,
                               "budget_minutes": self.request.budget_minutes},
                   "baseline": {"val_err": base_full["val_err"], **self.log.done[("proxy", BASELINE.key)]},
                   "limit_val_err": self.limit, "proxy_limit": self.proxy_limit,
                   "candidates": len(self.order), "bench": rows}
        if chosen is None:
            summary.update(chosen=None, why="no candidate stayed within the budget on the full validation split")
            return self.finish(summary)
        c = Candidate.from_dict(chosen["candidate"])
        test = self.step("test", c, lambda: {"test": self.measure.test_errors([c, BASELINE])}, reserve=False)
        summary.update(chosen=self.describe(chosen, rows, test), first=self.describe(first, rows, None),
                       why=self.why(chosen, confirmed, rows, field))
        return self.finish(summary)

    def describe(self, rec: dict | None, rows: dict, test: dict | None) -> dict | None:
        if rec is None:
            return None
        proxy = self.log.done[("proxy", rec["key"])]
        out = {"key": rec["key"], "candidate": rec["candidate"], "val_err": rec["val_err"],
               "size_mb": proxy.get("size_mb"), "macs": proxy.get("macs"), **rows.get(rec["key"], {})}
        if test is not None:
            out.update(test_err=test["test"][rec["key"]], baseline_test_err=test["test"][BASELINE.key])
        return out

    def why(self, chosen: dict, confirmed: list[dict], rows: dict, field: str) -> str:
        what = {"b1_ms": "ms per image at batch 1", "batch_ms": "ms per image at the bench's batch",
                "size_mb": "MB stored"}[field]
        others = [r for r in confirmed if r is not chosen]
        drop = 100 * (chosen["val_err"] - (self.limit - self.request.drop))
        text = (f"the least {what} of the {len(confirmed)} candidates confirmed within {self.request.max_drop:g} "
                f"point(s) of the baseline on the full validation split ({drop:+.2f} points)")
        if others and field != "size_mb":
            nxt = min(others, key=lambda r: rows.get(r["key"], {}).get(field, math.inf))
            text += f"; next: {nxt['key']}, {rows.get(nxt['key'], {}).get(field, math.nan):.3f} ms"
        return text

    def finish(self, summary: dict) -> dict:
        summary["seconds"] = self.spent()
        summary["front"] = fronts(self.log.records)
        return summary


def fronts(records: list[dict]) -> dict[str, list[str]]:
    """The keys on the front of validation error against each objective (the full split's error where a candidate
    has it, else its subset's), from the records of a search."""
    proxies = {r["key"]: r for r in records if r.get("stage") == "proxy" and "val_err_proxy" in r}
    full = {r["key"]: r["val_err"] for r in records if r.get("stage") == "confirm" and "val_err" in r}
    bench = next((r["rows"] for r in reversed(records) if r.get("stage") == "bench" and "rows" in r), {})
    out = {}
    for objective, field in OBJECTIVE_FIELDS.items():
        points = []
        for k, r in proxies.items():
            x = bench.get(k, {}).get(field, r.get(field)) if field != "size_mb" else r.get(field)
            if x is not None:
                points.append((x, full.get(k, r["val_err_proxy"]), k))
        out[objective] = [k for _, _, k in pareto(points)]
    return out
