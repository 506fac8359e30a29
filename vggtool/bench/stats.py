"""The bench's statistics: pooled medians, speed-ups with paired bootstrap intervals,
quantiles, and how far a figure moved between measurements. Pure functions of
lists of per-call times."""

from __future__ import annotations

import statistics
from collections.abc import Callable

BOOTSTRAP, CONFIDENCE = 1000, 0.95
MIN_INTERVAL_ROUNDS = 5  # fewer rounds give no interval worth the name (lo and hi are left empty)


def pooled_median(rounds: list[list[float]]) -> float:
    """The median of every call of every round: one slow round moves it little."""
    return statistics.median([t for r in rounds for t in r])


def speedup(reference: list[list[float]], candidate: list[list[float]]) -> float:
    """How many times faster `candidate` is: the ratio of the two pooled medians."""
    return pooled_median(reference) / pooled_median(candidate)


def _bootstrap(stat: Callable[[list[int]], float], n: int, resamples: int = BOOTSTRAP,
               confidence: float = CONFIDENCE, seed: int = 0,
               groups: list[int] | None = None) -> tuple[float | None, float | None]:
    """Percentile interval of `stat` over rounds resampled with replacement (fixed seed);
    (None, None) below MIN_INTERVAL_ROUNDS rounds. With `groups` (the part of each round)
    naming two parts or more, the resampling is two-stage: parts with replacement, then
    rounds within each part drawn, so the interval holds the spread between parts too."""
    import numpy as np

    if n < MIN_INTERVAL_ROUNDS:
        return None, None
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(np.asarray(groups) == g) for g in dict.fromkeys(groups)] if groups else []
    if len(members) < 2:
        members = [np.arange(n)]

    def pick() -> list[int]:
        if len(members) == 1:
            return list(rng.integers(0, n, n))
        drawn = [members[i] for i in rng.integers(0, len(members), len(members))]
        return [int(j) for rounds in drawn for j in rng.choice(rounds, len(rounds))]

    values = [stat(pick()) for _ in range(resamples)]
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def _median_of(rounds: list, pick: list[int]) -> float:
    import numpy as np

    return float(np.median(np.concatenate([rounds[j] for j in pick])))


def bootstrap_ratio(reference: list[list[float]], candidate: list[list[float]], resamples: int = BOOTSTRAP,
                    confidence: float = CONFIDENCE, seed: int = 0,
                    groups: list[int] | None = None) -> tuple[float, float | None, float | None]:
    """Speed-up pooled_median(reference) / pooled_median(candidate) with a paired
    bootstrap interval: rounds are resampled together for both sides (round r of each
    was measured side by side, so drift between rounds stays paired), parts first when
    `groups` names the part of each round."""
    import numpy as np

    ref, cand = [np.asarray(r, dtype=float) for r in reference], [np.asarray(r, dtype=float) for r in candidate]
    mid = speedup(reference, candidate)
    lo, hi = _bootstrap(lambda pick: _median_of(ref, pick) / _median_of(cand, pick), len(ref), resamples,
                        confidence, seed, groups)
    return mid, lo, hi


def bootstrap_center(rounds: list[list[float]], resamples: int = BOOTSTRAP, confidence: float = CONFIDENCE,
                     seed: int = 0, groups: list[int] | None = None) -> tuple[float, float | None, float | None]:
    """pooled_median(rounds) with its bootstrap interval over the rounds (parts first, as bootstrap_ratio)."""
    import numpy as np

    arrays = [np.asarray(r, dtype=float) for r in rounds]
    mid = pooled_median(rounds)
    lo, hi = _bootstrap(lambda pick: _median_of(arrays, pick), len(arrays), resamples, confidence, seed, groups)
    return mid, lo, hi


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def moved(pair) -> float:
    """How far a figure moved between two measurements, relative to their mean."""
    return abs(pair[0] - pair[1]) / ((pair[0] + pair[1]) / 2)


def spread(values) -> float:
    """How far a figure ranged over several measurements (a bench's parts), relative to their mean."""
    return (max(values) - min(values)) / (sum(values) / len(values))


def estimator(protocol: str, parts: bool = False) -> str:
    """How the figures were drawn from the timed calls, in words for the report."""
    center = ("median over every timed call of every round" if protocol == "time" else
              "median of the per-round figures (each round's time summed over its images)")
    over = "the parts, then the rounds within each part" if parts else "the rounds"
    return (f"{center}; speed-ups as ratios of those medians, with a {CONFIDENCE:.0%} paired bootstrap interval "
            f"over {over} ({BOOTSTRAP} resamples; none below {MIN_INTERVAL_ROUNDS} rounds)")
