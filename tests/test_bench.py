"""The bench: timing primitives with a predictor of known cost and a fake clock, the statistics, the
settings, and whole benches of a tiny run."""

import json
import shutil
import statistics
import time
from pathlib import Path

import pytest
import torch

from vggtool.bench import env, run, settings, stats
from vggtool.bench import timing as bt
from vggtool.data import Split
from vggtool.errors import VggtoolError

from .conftest import invoke, one_line_error


def split(n=64):
    return Split(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.zeros(n, dtype=torch.long))


def sleeper(per_call_ms):
    def predict(x):
        time.sleep(per_call_ms / 1000)
        return torch.zeros(len(x), 10)

    return predict


def test_batch_protocol_with_a_predictor_of_known_cost():
    # 64 images in batches of 16 = 4 calls of 8 ms: 32 ms / 64 images = 0.5 ms per image
    timed = bt.batch_timing(sleeper(8), bt.prepare(split(64), 16), warmup=2)
    assert timed.ms_per_image == pytest.approx(0.5, rel=0.25)
    assert (timed.calls, timed.images) == (4, 64)  # the report's protocol: every image once


class FakeClock:
    """A clock that moves only when a predictor 'runs': costs are exact, noise is injected."""

    def __init__(self, seed=0):
        import random

        self.now, self.rng = 0.0, random.Random(seed)

    def __call__(self):
        return self.now

    def predictor(self, ms, noise=0.0, drift=None):
        def predict(x):
            factor = 1 + self.rng.uniform(-noise, noise)
            self.now += ms / 1000 * factor * (drift() if drift else 1)
            return torch.zeros(len(x), 10)

        return predict


def test_autorange_covers_the_minimum_time_in_whole_batches():
    clock = FakeClock()
    prepared = bt.prepare(split(64), 16)
    timed = bt.batch_timing(clock.predictor(5), prepared, warmup=0, min_time=0.1, clock=clock)
    assert timed.seconds >= 0.1 and timed.calls == 20 and timed.images == 20 * 16
    assert timed.ms_per_image == pytest.approx(5 / 16)
    times = bt.batch1_times(clock.predictor(2), [torch.zeros(1, 3, 32, 32)], warmup=0, calls=3, min_time=0.05,
                               clock=clock)
    assert len(times) == 25 and sum(times) >= 50


def test_warm_up_stops_once_the_call_time_settles():
    clock = FakeClock()
    costs = iter([50, 30, 20, 10, 10, 10, 10, 10, 10] + [10] * 100)
    predict_calls = []

    def predict(x):
        predict_calls.append(1)
        clock.now += next(costs) / 1000

    made = bt.warm_up(predict, [torch.zeros(1)], max_calls=60, clock=clock)
    assert made == len(predict_calls) == 9  # blocks (50,30,20) (10,10,10) (10,10,10): settled on the third
    assert bt.warm_up(predict, [torch.zeros(1)], max_calls=0, clock=clock) == 0


def test_speedup_intervals_cover_the_true_ratio_under_noise_and_drift():
    clock = FakeClock(seed=3)
    rounds = {"slow": 1.0}
    drift = lambda: rounds["slow"]  # noqa: E731  the machine slows down from round to round
    base, cand = clock.predictor(8, noise=0.3, drift=drift), clock.predictor(4, noise=0.3, drift=drift)
    prepared = bt.prepare(split(64), 16)
    a, b = [], []
    for r in range(30):
        rounds["slow"] = 1 + 0.02 * r
        a.append(list(bt.batch_timing(base, prepared, 0, 0.02, clock).call_ms_per_image))
        b.append(list(bt.batch_timing(cand, prepared, 0, 0.02, clock).call_ms_per_image))
    mid, lo, hi = stats.bootstrap_ratio(a, b)
    assert lo <= 2.0 <= hi and hi - lo < 0.4
    per_round = [statistics.median(r) for r in a]
    assert max(per_round) / min(per_round) > 1.4  # the drift was real: rounds paired side by side removed it
    assert mid == pytest.approx(2.0, rel=0.1)
    # the interval is the same on a rerun (fixed seed); too few rounds give none; it covers the ratio for other noise
    assert stats.bootstrap_ratio(a, b) == (mid, lo, hi)
    assert stats.bootstrap_ratio(a[:4], b[:4])[1:] == (None, None)
    covered = 0
    for seed in range(40):
        noisy = FakeClock(seed=seed)
        base, cand = noisy.predictor(8, noise=0.3), noisy.predictor(4, noise=0.3)
        a = [list(bt.batch_timing(base, prepared, 0, 0.02, noisy).call_ms_per_image) for _ in range(30)]
        b = [list(bt.batch_timing(cand, prepared, 0, 0.02, noisy).call_ms_per_image) for _ in range(30)]
        _, lo, hi = stats.bootstrap_ratio(a, b)
        covered += lo <= 2.0 <= hi
    assert covered >= 34  # measured 36 of 40: a percentile bootstrap of a median covers a little under 95%


def test_intervals_over_parts_cover_a_ratio_that_moves_between_processes():
    # each part (fresh loads) runs the candidate at its own speed, 5% apart on average, while the rounds within
    # a part agree to 2%: the truth is the ratio over all processes, which one bench's six parts only sample
    import random

    covered = {"rounds": 0, "parts": 0}
    for seed in range(30):
        rng = random.Random(seed)
        ref, cand, groups = [], [], []
        for part in range(6):
            offset = rng.gauss(1, 0.05)
            for _ in range(8):
                ref.append([10 * rng.uniform(0.98, 1.02) for _ in range(3)])
                cand.append([5 * offset * rng.uniform(0.98, 1.02) for _ in range(3)])
                groups.append(part)
        _, lo, hi = stats.bootstrap_ratio(ref, cand, resamples=300, seed=seed)
        covered["rounds"] += lo <= 2.0 <= hi
        mid, lo, hi = stats.bootstrap_ratio(ref, cand, resamples=300, seed=seed, groups=groups)
        covered["parts"] += lo <= 2.0 <= hi
        assert lo <= mid <= hi
    # measured 11 and 25 of 30: resampling only rounds treats one bench's processes as the only ones there are
    assert covered["rounds"] <= 17 and covered["parts"] >= 22
    assert stats.bootstrap_ratio(ref, cand, groups=[0] * len(ref)) == stats.bootstrap_ratio(ref, cand)  # one part


def test_a_time_budget_plans_as_many_rounds_as_fit_within_bounds():
    assert bt.planned_rounds(30, 0.0, 5, 1.0) == 30  # no budget: exactly the fewest
    assert bt.planned_rounds(30, 300.0, 10, 20.0) == 150  # 2 s a round so far: 150 fit in 300 s
    assert bt.planned_rounds(30, 300.0, 10, 200.0) == 30  # slower than the budget: still the fewest
    assert bt.planned_rounds(30, 1e6, 1, 0.01) == bt.MAX_ROUNDS
    assert bt.planned_rounds(30, 300.0, 0, 0.0) == 30


def test_bench_adds_rounds_while_the_time_budget_lasts(own_run, home, tmp_path):
    invoke("compress", "--run-dir", str(own_run), "--variant", "baseline")
    started = time.perf_counter()
    invoke("bench", "--run-dir", str(own_run), "--variant", "baseline", "--rounds", "2", "--time-budget", "2",
           "--min-time", "0.01", "--loads", "1", "--threads", "1", "--accuracy-images", "20", "--results-dir", str(tmp_path))
    took = time.perf_counter() - started
    results = json.loads((tmp_path / "results.json").read_text())
    (row,) = results["rows"]
    assert results["settings"]["time_budget"] == 2.0
    # a turn of two 10 ms blocks after a 0.05 s idle gap fits many times in 2 s (one part: no reloads in it)
    assert row["rounds"] > 2 * 5
    assert took < 2 + 60  # about 2 s of timing, plus loading and scoring
    assert 2 <= results["environment"]["bench_seconds"] <= took  # its own wall time, inside the command's
    assert "as many as a 2 s budget allowed, at least 2" in (tmp_path / "REPORT.md").read_text()


def test_batch1_times_with_a_predictor_of_known_cost():
    times = bt.batch1_times(sleeper(5), [x for x, _ in bt.prepare(split(8), 1)], warmup=3, calls=20)
    assert len(times) == 20  # no minimum time asked: exactly the calls
    assert sorted(times)[10] == pytest.approx(5.0, rel=0.3)


def test_timing_counts_only_time_inside_predict():
    """A fake clock that moves by uneven amounts inside each predict call (1, 4, 2, 7, 3 ms) and by other
    uneven amounts between the calls, while the next input is fetched: only the first may be counted."""
    now = [0.0]
    inside = iter([0.001, 0.004, 0.002, 0.007, 0.003])
    outside = iter([0.05, 0.011, 0.3, 0.02, 0.09, 0.013])

    class Inputs(list):
        def __getitem__(self, i):
            now[0] += next(outside)  # fetching an input takes time too, outside the call
            return super().__getitem__(i)

    def predict(x):
        now[0] += next(inside)
        return torch.zeros(1, 2)

    times = bt.batch1_times(predict, Inputs([torch.zeros(1, 3, 32, 32)] * 4), warmup=0, calls=5,
                               clock=lambda: now[0])
    assert times == pytest.approx([1.0, 4.0, 2.0, 7.0, 3.0])


def test_results_name_the_commit_and_say_when_the_code_was_modified(tmp_path):
    import re
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    assert env.git_commit(repo) == "unknown"  # not a checkout (tmp_path lies outside any repository)

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                       capture_output=True)

    git("init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    clean = env.git_commit(repo)
    assert re.fullmatch(r"[0-9a-f]{7,}", clean)
    (repo / "notes.txt").write_text("untracked files do not change what ran\n")
    assert env.git_commit(repo) == clean
    (repo / "code.py").write_text("x = 2\n")
    assert env.git_commit(repo) == clean + "-dirty"
    git("commit", "-q", "-am", "two")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "mod.py").write_text("y = 1\n")
    (repo / "results.json").write_text("{}\n")
    git("add", ".")
    git("commit", "-q", "-m", "three")
    package = env.git_commit(repo / "pkg")
    (repo / "results.json").write_text('{"rows": []}\n')  # a bench's results, written into the checkout
    assert env.git_commit(repo / "pkg") == package  # outside the package's folder: the code is as committed
    (repo / "pkg" / "mod.py").write_text("y = 2\n")
    assert env.git_commit(repo / "pkg") == package + "-dirty"


def test_cpu_list_parsing():
    import os

    available = sorted(os.sched_getaffinity(0))
    assert settings.parse_cpus(f"{available[0]}") == (available[0],)
    assert settings.parse_cpus(None) == ()
    with pytest.raises(VggtoolError, match="not available"):
        settings.parse_cpus("0-4095")
    with pytest.raises(VggtoolError, match="cannot parse"):
        settings.parse_cpus("zero")


def test_bench_bad_input(trained_run, home, tmp_path):
    one_line_error(invoke("bench", "--run-dir", str(trained_run), "--cpus", "4000-4001", ok=False), "not available")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    one_line_error(invoke("bench", "--run-dir", str(empty), ok=False), "no variants to measure")


def test_bench_measures_every_variant_and_reports_failures(own_run, home, tmp_path):
    trained_run = own_run
    from vggtool.compress import REGISTRY

    invoke("compress", "--run-dir", str(trained_run), "--variant", "baseline", "--variant", "static-int8-fused",
           "--variant", "onnx-fp32")
    broken = trained_run / "variants" / "broken"
    shutil.copytree(trained_run / "variants" / "baseline", broken)
    (broken / "model.safetensors").write_bytes(b"corrupt")
    out = invoke("bench", "--run-dir", str(trained_run), "--variant", "baseline", "--variant", "static-int8-fused",
                 "--variant", "onnx-fp32", "--variant", "broken", "--quick", "--rounds", "6", "--time-budget", "0",
                 "--threads", "1",
                 "--min-time", "0.1", "--results-dir", str(tmp_path)).output
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["variant"]: r for r in results["rows"]}
    assert rows["broken"]["status"].startswith("failed") and "broken" in out
    for name in ("baseline", "static-int8-fused", "onnx-fp32"):
        assert rows[name]["status"] == "ok" and rows[name]["images_accuracy"] == 100
        assert rows[name]["batch_ms"] > 0 and rows[name]["b1_ms_median"] > 0
        assert rows[name]["rounds"] == 6  # enough rounds for an interval
        assert rows[name]["batch_speedup_lo"] <= rows[name]["batch_speedup"] <= rows[name]["batch_speedup_hi"]
        assert rows[name]["b1_speedup_lo"] <= rows[name]["b1_speedup"] <= rows[name]["b1_speedup_hi"]
        assert rows[name]["batch_ms_lo"] <= rows[name]["batch_ms"] <= rows[name]["batch_ms_hi"]
        # whole batches of 16 only (the 100 test images end in a batch of 4, never timed); means rounded apart
        assert rows[name]["images_timed"] >= 16 and rows[name]["images_timed"] == pytest.approx(
            16 * rows[name]["calls_timed"], abs=8)
    assert rows["baseline"]["batch_speedup"] == pytest.approx(1.0)
    assert results["settings"]["protocol"] == "time" and results["settings"]["min_time"] == 0.1
    assert results["environment"]["torch_threads"] == 1
    assert results["environment"]["torch"] == torch.__version__
    report_text = (tmp_path / "REPORT.md").read_text()
    assert "Post-Training Static Fuse" in report_text and "(95% interval)" in report_text
    assert "paired bootstrap interval over the parts, then the rounds within each part" in report_text
    assert {len(v["b1_speedup"]) for v in results["parts"]["variants"].values()} == {3}  # --loads 3 by default
    assert "## Spread between parts" in report_text
    from vggtool import report  # the bench's REPORT.md is what `vggtool report` renders again from the file

    assert report_text == report.render_markdown(report.load_results(tmp_path))
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("variant,method,type,status") and len(csv_lines) == 5
    assert set(REGISTRY) >= {"baseline", "static-int8-fused", "onnx-fp32"}


def test_balanced_subset_takes_the_first_images_of_every_class():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    data = Split(torch.arange(10).view(10, 1, 1, 1).to(torch.uint8), labels)
    sub = run.balanced_subset(data, 6)
    assert sub.images.flatten().tolist() == [0, 1, 2, 3, 4, 6]  # two of each class, in the split's order
    assert run.balanced_subset(data, 0) is data and run.balanced_subset(data, 10) is data
    assert len(run.balanced_subset(data, 8)) == 6  # rounded down to a multiple of the 3 classes
    with pytest.raises(VggtoolError, match="below the 3 classes"):
        run.balanced_subset(data, 2)


def test_report_protocol_times_every_image_once(own_run, home, tmp_path):
    invoke("compress", "--run-dir", str(own_run), "--variant", "baseline")
    invoke("bench", "--run-dir", str(own_run), "--protocol", "report", "--rounds", "1", "--time-budget", "0", "--loads", "1",
           "--threads", "1", "--accuracy-images", "50", "--results-dir", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    (row,) = results["rows"]
    assert (row["images_timed"], row["calls_timed"]) == (100, 7)  # 100 test images in batches of 16
    assert row["images_accuracy"] == 50  # 5 of each of the 10 classes; timing still on all 100
    report_text = (tmp_path / "REPORT.md").read_text()
    assert "Runtime is the report's protocol" in report_text
    assert "Errors over 50 test images, a class-balanced subset of the 100" in report_text


def test_load_parts_only_advance_when_a_time_budget_grows_the_plan():
    assert [bt.load_part(0, r, 30, 3) for r in (0, 9, 10, 20, 29, 30)] == [0, 0, 1, 2, 2, 0]  # none after the last
    part, reloads = 0, []
    for r in range(1, 45):  # 30 rounds planned, then 45 once the pace is known: a boundary moves past round 10
        planned = 30 if r < 12 else 45
        if bt.load_part(part, r, planned, 3) > part:
            part = bt.load_part(part, r, planned, 3)
            reloads.append(r)
    assert reloads == [10, 30]  # two reloads for three parts, never the first boundary twice


def test_each_part_of_a_pass_loads_every_variant_afresh(own_run, home, tmp_path, monkeypatch):
    invoke("compress", "--run-dir", str(own_run), "--variant", "baseline", "--variant", "static-int8-fused")
    loaded = []
    real = bt.load_variant

    def counting(folder, threads, runtime=None):
        loaded.append(Path(folder).name)
        return real(folder, threads, runtime)

    monkeypatch.setattr(bt, "load_variant", counting)  # each part's copies
    monkeypatch.setattr(run, "load_variant", counting)  # the copy that is scored
    invoke("bench", "--run-dir", str(own_run), "--variant", "baseline", "--variant", "static-int8-fused", "--rounds",
           "6", "--time-budget", "0", "--loads", "3", "--min-time", "0.01", "--threads", "1",
           "--accuracy-images", "20", "--results-dir", str(tmp_path))
    # once to score accuracy, then afresh for each of the 3 parts
    assert loaded.count("baseline") == loaded.count("static-int8-fused") == 1 + 3
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["loads"] == 3 and {r["rounds"] for r in results["rows"]} == {6}
    report_text = (tmp_path / "REPORT.md").read_text()
    assert "every variant loaded afresh for each of 3 parts of a pass)" in report_text
    one_line_error(invoke("bench", "--run-dir", str(own_run), "--loads", "0", ok=False), "loads must be positive")


def test_settings_are_built_by_keyword_with_the_measured_defaults_and_the_quick_profile():
    with pytest.raises(TypeError):
        settings.BenchSettings(2)  # no positional settings: 16 of them in a row were unreadable
    full, quick = settings.BenchSettings(), settings.BenchSettings.quick()
    assert (full.time_budget, full.loads, full.min_time, full.latency_images) == (600.0, 3, 0.2, 0)
    assert (quick.time_budget, quick.min_time, quick.latency_images, quick.accuracy_images) == (300.0, 0.03, 1000, 2000)
    assert (quick.warmup, quick.single_calls, quick.idle_gap) == (full.warmup, full.single_calls, full.idle_gap)
    chosen = settings.BenchSettings.chosen(quick=True, rounds=5, min_time=None)
    assert (chosen.rounds, chosen.min_time) == (5, 0.03)  # None: the profile's value
    with pytest.raises(VggtoolError, match="loads must be positive"):
        settings.BenchSettings.chosen(loads=0)


def test_bench_help_is_short_and_shows_the_settings_defaults(monkeypatch):
    out = invoke("bench", "--help").output
    assert len(out.splitlines()) < 40
    flat = " ".join(out.split())
    assert "[default: 600, quick: 300]" in flat and "[default: 0.2, quick: 0.03]" in flat
    for gone in ("--fresh-process", "--repeat-check", "--resume", "--idle-gap", "--warmup", "--single-calls"):
        assert gone not in out
