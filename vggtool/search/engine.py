"""The search itself, over an injected `Measure` and clock (tests give it a fake of both).

Stages, cheap to dear: every way to deploy the baseline on a validation subset with a short timing; structured
ratios searched by bisection (each a distilled fine-tune, the dear part), then longer fine-tunes of the first ratio
that missed, while the budget lasts; every way to deploy each parent that stays within the budget; the layers that
lose most kept in float where plain int8 misses; weight sharing where size is the goal. The candidates nearest the
front then get the full validation split and one interleaved bench timing; the choice is made on those, and only
then is the test split read, once.

Every finished step is a line of search.jsonl (`Log`), after a first line with the request: a rerun of the same
request reads it back and repeats no step (a step skipped for the budget stays skipped under the same budget); as
the decisions depend only on what was recorded, a search killed anywhere and rerun makes the same choice.
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

    def cost(self, c: Candidate) -> float: ...  # estimated seconds to build c's last step and take its proxies
    def evaluation_cost(self) -> float: ...  # estimated seconds of one evaluation on the whole validation split
    def scan_cost(self, parent: Candidate) -> float: ...  # estimated seconds of a parent's layer scan
    def figures(self, c: Candidate) -> dict: ...  # builds every missing step; size_mb, macs, params
    def error(self, c: Candidate, images: int) -> float: ...  # validation top-1 error, first `images` (0: all)
    def timing(self, c: Candidate, seconds: float) -> dict: ...  # b1_ms, batch_ms: a short timing of `c` alone
    def bench(self, cs: list[Candidate], seconds: float) -> dict: ...  # key -> ms and speed-ups, interleaved
    def ranking(self, parent: Candidate) -> list[str]: ...  # weight layers, the one int8 costs most first
    def test_errors(self, cs: list[Candidate]) -> dict: ...  # key -> test top-1 error: the one read of test
    def note(self, c: Candidate, record: dict) -> None: ...  # a finished step's figures, into the variant's meta


class Log:
    """search.jsonl: the request, then one JSON line per finished step, flushed as it is written; a rerun reads it
    back (a line cut off by a kill is dropped) and finds each step by stage and key."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records = self.read()
        self.request = next((r for r in self.records if r.get("stage") == "request"), None)
        self.done = {(r["stage"], r["key"]): r for r in self.records if "key" in r}
        # spent by earlier runs of this search: each line records the total so far, time between steps included
        self.before = max((r.get("spent", 0.0) for r in self.records), default=0.0)

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
        if "key" in record:
            self.done[(record["stage"], record["key"])] = record


OnStep = Callable[[dict, float, float], None]  # (record, seconds spent, seconds of budget)


def _ok(rec: dict | None) -> bool:
    return rec is not None and "failed" not in rec and "skipped" not in rec


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
             reserve: bool = True, force: bool = False, key: str | None = None, expected: float = 0.0) -> dict | None:
        """A step's record: from the log where a run of this request recorded it, else measured now (a candidate
        that fails to build or run is recorded as failed: the search goes on); "skipped" where its estimate no
        longer fits in the budget less what the choice needs (`reserve`), unless `force`d."""
        key = key or c.key
        done = self.log.done.get((stage, key))
        if done is not None and (not done.get("skipped") or done.get("budget_minutes") == self.request.budget_minutes):
            return done
        if not force and self.spent() + estimate + (self.reserve if reserve else 0.0) > self.budget:
            left = max(0.0, self.budget - self.spent())
            record = {"stage": stage, "key": key, "candidate": c.to_dict(), "seconds": 0.0, "spent": self.spent(),
                      "budget_minutes": self.request.budget_minutes,
                      "skipped": f"over budget (about {estimate:.0f} s, {left:.0f} s left)"}
            self.log.add(record)
            self.on_step(record, self.spent(), self.budget)
            return record
        start = self.clock()
        try:
            figures = work()
        except Exception as e:  # one candidate that cannot be built or run here (not a kill: that is no Exception)
            figures = {"failed": " ".join(str(e).split()) or type(e).__name__}
        record = {"stage": stage, "key": key, "candidate": c.to_dict(), **figures, "seconds": self.clock() - start,
                  "spent": self.spent(), **({"expected": expected} if expected else {})}
        self.log.add(record)
        if _ok(record):
            self.measure.note(c, record)
        self.on_step(record, self.spent(), self.budget)
        return record

    def proxy(self, c: Candidate, force: bool = False) -> dict | None:
        images, seconds = self.space.proxy_images, self.space.proxy_seconds
        rec = self.step("proxy", c, lambda: {**self.measure.figures(c), "val_err_proxy": self.measure.error(c, images),
                                             **self.measure.timing(c, seconds)}, self.measure.cost(c), force=force)
        if not _ok(rec):
            return rec if force else None
        if c not in self.order:
            self.order.append(c)
        return rec

    def check_request(self) -> None:
        """The log's request line: written first on a fresh search; a rerun must ask the same (a larger or smaller
        budget is allowed: it decides again what the old one skipped)."""
        asked = {"max_drop": self.request.max_drop, "objective": self.request.objective,
                 "space": json.loads(json.dumps(self.request.space.to_dict()))}
        if self.log.request is None:
            self.log.add({"stage": "request", **asked, "spent": 0.0})
            return
        known = {k: self.log.request.get(k) for k in asked}
        if known != asked:
            differ = ", ".join(k for k in asked if known[k] != asked[k])
            raise VggtoolError(f"{self.log.path} holds a search with another {differ}: rerun it as it was asked, or "
                               f"remove {self.log.path.parent} to search afresh")

    # ------------------------------------------------------------ the stages
    def run(self) -> dict:
        if self.log.request is None:  # a fresh search: refuse a budget that buys nothing before writing anything
            confirm = self.measure.evaluation_cost() * (self.space.confirm + 2) + self.space.confirm_seconds
            one = self.measure.cost(BASELINE) + self.measure.cost(self.space.deployed(())[0]) + confirm
            if one > self.budget:
                raise VggtoolError(f"a budget of {self.request.budget_minutes:g} min is too small: the baseline, one "
                                   f"candidate and their confirmation take about {one / 60:.1f} min here; give "
                                   f"--budget-minutes {math.ceil(one / 60)} or more")
        self.check_request()
        base = self.proxy(BASELINE, force=True)
        base_full = self.step("confirm", BASELINE, lambda: {"val_err": self.measure.error(BASELINE, 0)}, force=True)
        for rec in (base, base_full):
            if not _ok(rec):
                raise VggtoolError(f"the baseline could not be measured: {rec['failed']}")
        # what confirming takes (the full split, for each candidate confirmed and the first within the budget)
        self.reserve = (self.space.confirm + 1) * base_full["seconds"] + self.space.confirm_seconds
        self.limit = base_full["val_err"] + self.request.drop  # full validation split
        n, p = self.space.proxy_images, base["val_err_proxy"]
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

    def parent(self, amount: float, epochs: int) -> tuple[tuple, bool | None]:
        """A distilled parent pruned by `amount`: whether it stays within the budget on the full validation split
        (None where the budget cannot pay for it and its deployments); deployed where it does."""
        parent = self.space.pruned_parent(amount, epochs)
        c = Candidate(parent, "torch")
        # (the parent itself in torch among them is priced by its proxies alone: its fine-tune is `own` below)
        deployments = sum(self.measure.cost(d) for d in self.space.deployed(parent) if d.chain != parent)
        # the estimate of a fine-tune, scaled by how the ones before it turned out against theirs
        tuned = [r for r in self.log.records if r.get("stage") == "parent" and _ok(r) and r.get("expected")]
        factor = sum(r["seconds"] for r in tuned) / sum(r["expected"] for r in tuned) if tuned else 1.0
        own = self.measure.cost(c)
        rec = self.step("parent", c, lambda: {**self.measure.figures(c), "val_err": self.measure.error(c, 0)},
                        own * factor + deployments, expected=own)
        if "skipped" in rec:
            return parent, None
        within = _ok(rec) and rec["val_err"] <= self.limit
        if within:
            self.deploy(parent)
        return parent, within

    def prune(self):
        """Structured ratios by bisection: the largest whose distilled parent stays within the budget (each one
        tried is a fine-tune); then, while the budget lasts, twice and four times the epochs for the first ratio
        that missed, and the next ones while they stay within. Yields each parent that does."""
        amounts = sorted(self.space.amounts)
        epochs = self.space.finetune_epochs
        lo, hi = -1, len(amounts)
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            parent, within = self.parent(amounts[mid], epochs)
            if within is None:
                return
            if within:
                lo = mid
                yield parent
            else:
                hi = mid
        for _ in range(self.space.longer):
            epochs *= 2
            while hi < len(amounts):
                parent, within = self.parent(amounts[hi], epochs)
                if within is None:
                    return
                if not within:
                    break
                lo, hi = hi, hi + 1
                yield parent

    def keep_float(self, parent: tuple) -> None:
        """Where int8 of a parent misses the budget on the subset but the parent does not: the layers that lose
        most kept in float (a sensitivity scan of the parent, then fewer layers quantized)."""
        parent_c = Candidate(parent, "torch") if parent else BASELINE
        own = self.log.done.get(("parent", parent_c.key)) if parent else self.log.done.get(("confirm", BASELINE.key))
        if not _ok(own) or own["val_err"] > self.limit:
            return
        missed = [c for c in self.space.deployed(parent) if self.space.can_keep_float(c)
                  and _ok(self.log.done.get(("proxy", c.key)))
                  and self.log.done[("proxy", c.key)]["val_err_proxy"] > self.proxy_limit]
        if not missed:
            return
        scan = self.step("scan", parent_c, lambda: {"ranking": self.measure.ranking(parent_c)},
                         self.measure.scan_cost(parent_c))
        if not _ok(scan):
            return
        for c in missed:
            for kept in self.space.kept_float(c, scan["ranking"], self.limit - own["val_err"]):
                self.proxy(kept)

    # ------------------------------------------------------------ the choice
    def within_proxy(self) -> list[dict]:
        return [self.log.done[("proxy", c.key)] for c in self.order if c != BASELINE
                and self.log.done[("proxy", c.key)]["val_err_proxy"] <= self.proxy_limit]

    def confirm(self, c: Candidate) -> dict | None:
        """The full validation split, while what is left pays for it and the bench after it."""
        estimate = self.log.done[("confirm", BASELINE.key)]["seconds"] + self.space.confirm_seconds
        rec = self.step("confirm", c, lambda: {"val_err": self.measure.error(c, 0)}, estimate, reserve=False)
        return rec if _ok(rec) else None

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
        timed = list(dict.fromkeys([BASELINE, *(Candidate.from_dict(r["candidate"])
                                                for r in confirmed + ([first] if first else []))]))
        summary = {"request": {"max_drop": self.request.max_drop, "objective": self.request.objective,
                               "budget_minutes": self.request.budget_minutes},
                   "baseline": {**self.log.done[("proxy", BASELINE.key)], "val_err": base_full["val_err"]},
                   "limit_val_err": self.limit, "proxy_limit": self.proxy_limit, "candidates": len(self.order) - 1,
                   "proxy_images": self.space.proxy_images}
        rows = {}
        if len(timed) > 1:  # the one bench of the confirmed, always run (the reserve kept its time)
            bench = self.step("bench", BASELINE, lambda: {"rows": self.measure.bench(timed, self.space.confirm_seconds)},
                              force=True, key="+".join(sorted(c.key for c in timed)))
            rows = bench.get("rows", {})
            if not rows and field != "size_mb":
                summary.update(chosen=None, bench=rows, why=f"the bench of the confirmed failed: {bench.get('failed')}")
                return self.finish(summary)
        summary["bench"] = rows

        def value(rec: dict) -> float:
            proxy = self.log.done[("proxy", rec["key"])]
            return proxy["size_mb"] if field == "size_mb" else rows.get(rec["key"], {}).get(field, math.inf)

        if not confirmed:
            summary.update(chosen=None, why="no candidate stayed within the budget on the full validation split")
            return self.finish(summary)
        chosen = min(confirmed, key=lambda rec: (value(rec), rec["val_err"]))
        c = Candidate.from_dict(chosen["candidate"])
        earlier = [r for r in self.log.records if r.get("stage") == "test" and _ok(r)]
        if earlier and earlier[0]["key"] != c.key:
            raise VggtoolError(f"the test split was read for {earlier[0]['key']} already, and this search now chooses "
                               f"{c.key}: remove {self.log.path.parent} to search afresh")
        test = self.step("test", c, lambda: {"test": self.measure.test_errors([c, BASELINE])}, force=True)
        summary.update(chosen=self.describe(chosen, rows, test), first=self.describe(first, rows, None),
                       why=self.why(chosen, confirmed, rows, field))
        return self.finish(summary)

    def describe(self, rec: dict | None, rows: dict, test: dict | None) -> dict | None:
        if rec is None:
            return None
        proxy = self.log.done[("proxy", rec["key"])]
        out = {"key": rec["key"], "candidate": rec["candidate"], "val_err": rec["val_err"],
               "size_mb": proxy.get("size_mb"), "macs": proxy.get("macs"), **rows.get(rec["key"], {})}
        if test is not None and "test" in test:
            out.update(test_err=test["test"][rec["key"]], baseline_test_err=test["test"][BASELINE.key])
        elif test is not None:
            out["test_failed"] = test.get("failed")
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


def points(records: list[dict], field: str) -> list[tuple[float, float, str]]:
    """(objective, validation error, key) of every candidate measured, all alike: the subset's error and the short
    timing (the confirmed few have the whole split and a bench too; mixing the two would mix two measurements)."""
    proxies = {r["key"]: r for r in records if r.get("stage") == "proxy" and _ok(r)}
    return [(r[field], r["val_err_proxy"], k) for k, r in proxies.items() if r.get(field) is not None]


def fronts(records: list[dict]) -> dict[str, list[str]]:
    """The keys on the front of validation error (subset) against each objective (short timing, size)."""
    return {objective: [k for _, _, k in pareto(points(records, field))] for objective, field in OBJECTIVE_FIELDS.items()}
