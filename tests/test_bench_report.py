"""Benchmark harness with a predictor of known cost; report rendering against golden text."""

import itertools
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import pytest
import torch

from vggtool import bench, report
from vggtool.data import Split
from vggtool.errors import VggtoolError

from .conftest import invoke, one_line_error

FIXTURES = Path(__file__).parent / "fixtures"


def split(n=64):
    return Split(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.zeros(n, dtype=torch.long))


def sleeper(per_call_ms):
    def predict(x):
        time.sleep(per_call_ms / 1000)
        return torch.zeros(len(x), 10)

    return predict


def test_batch_protocol_with_a_predictor_of_known_cost():
    # 64 images in batches of 16 = 4 calls of 8 ms: 32 ms / 64 images = 0.5 ms per image
    timing = bench.batch_timing(sleeper(8), bench.prepare(split(64), 16), warmup=2)
    assert timing.ms_per_image == pytest.approx(0.5, rel=0.25)
    assert (timing.calls, timing.images) == (4, 64)  # the report's protocol: every image once


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
    prepared = bench.prepare(split(64), 16)
    timing = bench.batch_timing(clock.predictor(5), prepared, warmup=0, min_time=0.1, clock=clock)
    assert timing.seconds >= 0.1 and timing.calls == 20 and timing.images == 20 * 16
    assert timing.ms_per_image == pytest.approx(5 / 16)
    times = bench.batch1_times(clock.predictor(2), [torch.zeros(1, 3, 32, 32)], warmup=0, calls=3, min_time=0.05,
                               clock=clock)
    assert len(times) == 25 and sum(times) >= 50


def test_warm_up_stops_once_the_call_time_settles():
    clock = FakeClock()
    costs = iter([50, 30, 20, 10, 10, 10, 10, 10, 10] + [10] * 100)
    predict_calls = []

    def predict(x):
        predict_calls.append(1)
        clock.now += next(costs) / 1000

    made = bench.warm_up(predict, [torch.zeros(1)], max_calls=60, clock=clock)
    assert made == len(predict_calls) == 9  # blocks (50,30,20) (10,10,10) (10,10,10): settled on the third
    assert bench.warm_up(predict, [torch.zeros(1)], max_calls=0, clock=clock) == 0


def test_speedup_intervals_cover_the_true_ratio_under_noise_and_drift():
    clock = FakeClock(seed=3)
    rounds = {"slow": 1.0}
    drift = lambda: rounds["slow"]  # noqa: E731  the machine slows down from round to round
    base, cand = clock.predictor(8, noise=0.3, drift=drift), clock.predictor(4, noise=0.3, drift=drift)
    prepared = bench.prepare(split(64), 16)
    a, b = [], []
    for r in range(30):
        rounds["slow"] = 1 + 0.02 * r
        a.append(list(bench.batch_timing(base, prepared, 0, 0.02, clock).call_ms_per_image))
        b.append(list(bench.batch_timing(cand, prepared, 0, 0.02, clock).call_ms_per_image))
    mid, lo, hi = bench.bootstrap_ratio(a, b)
    assert lo <= 2.0 <= hi and hi - lo < 0.4
    per_round = [statistics.median(r) for r in a]
    assert max(per_round) / min(per_round) > 1.4  # the drift was real: rounds paired side by side removed it
    assert mid == pytest.approx(2.0, rel=0.1)
    # the interval is the same on a rerun (fixed seed); too few rounds give none; it covers the ratio for other noise
    assert bench.bootstrap_ratio(a, b) == (mid, lo, hi)
    assert bench.bootstrap_ratio(a[:4], b[:4])[1:] == (None, None)
    covered = 0
    for seed in range(40):
        noisy = FakeClock(seed=seed)
        base, cand = noisy.predictor(8, noise=0.3), noisy.predictor(4, noise=0.3)
        a = [list(bench.batch_timing(base, prepared, 0, 0.02, noisy).call_ms_per_image) for _ in range(30)]
        b = [list(bench.batch_timing(cand, prepared, 0, 0.02, noisy).call_ms_per_image) for _ in range(30)]
        _, lo, hi = bench.bootstrap_ratio(a, b)
        covered += lo <= 2.0 <= hi
    assert covered >= 34  # measured 36 of 40: a percentile bootstrap of a median covers a little under 95%


def test_intervals_over_parts_cover_a_ratio_that_moves_between_processes():
    # each part (a fresh process) runs the candidate at its own speed, 5% apart on average, while the rounds within
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
        _, lo, hi = bench.bootstrap_ratio(ref, cand, resamples=300, seed=seed)
        covered["rounds"] += lo <= 2.0 <= hi
        mid, lo, hi = bench.bootstrap_ratio(ref, cand, resamples=300, seed=seed, groups=groups)
        covered["parts"] += lo <= 2.0 <= hi
        assert lo <= mid <= hi
    # measured 11 and 25 of 30: resampling only rounds treats one bench's processes as the only ones there are
    assert covered["rounds"] <= 17 and covered["parts"] >= 22
    assert bench.bootstrap_ratio(ref, cand, groups=[0] * len(ref)) == bench.bootstrap_ratio(ref, cand)  # one part


def test_repeat_check_reports_the_injected_difference():
    def timings(ms):
        return [bench.Timing((ms,), 16, ms / 1000 * 16)] * 3

    singles = [[1.0] * 5] * 3
    passes = [({"baseline": timings(8.0), "v": timings(4.0)}, {"baseline": [[8.0] * 5] * 3, "v": singles}),
              ({"baseline": timings(8.0), "v": timings(5.0)}, {"baseline": [[8.0] * 5] * 3, "v": singles})]
    spread = bench._repeat_spread(passes, "baseline")
    assert spread["variants"]["v"]["batch_speedup"] == [2.0, 1.6]
    assert spread["batch_speedup_max_rel_diff"] == pytest.approx(0.4 / 1.8)
    assert spread["b1_speedup_max_rel_diff"] == 0.0


def test_the_spread_between_parts_reports_the_injected_difference():
    def timings(*ms):
        return [bench.Timing((m,), 16, m / 1000 * 16) for m in ms]

    batched = {"baseline": timings(8.0, 8.0, 8.0, 8.0), "v": timings(4.0, 4.0, 5.0, 5.0)}
    b1 = {"baseline": [[2.0]] * 4, "v": [[1.0], [1.0], [1.0], [1.0]]}
    between = bench._part_spread(batched, b1, "baseline", [0, 0, 1, 1], "time")
    assert between["variants"]["v"]["batch_speedup"] == [2.0, 1.6]  # each part's rounds alone
    assert between["batch_speedup_max_range"] == pytest.approx(0.4 / 1.8) and between["b1_speedup_max_range"] == 0
    assert between["variants"]["v"]["batch_ms"] == [4.0, 5.0] and between["variants"]["baseline"]["batch_ms"] == [8.0, 8.0]
    text = report.render_markdown({**json.loads((FIXTURES / "results.json").read_text()), "parts": between})
    assert "widest range between parts (relative to their mean) was 22.2% (batch; v: 2.00x, 1.60x) and 0.0% (batch 1" in text
    assert "Batch ms per image in those parts: v 4.00, 5.00, baseline 8.00, 8.00." in text  # the variant moved
    older = {k: v for k, v in between.items() if k != "baseline"}  # results.json from before the per-part ms
    text = report.render_markdown({**json.loads((FIXTURES / "results.json").read_text()), "parts": older})
    assert "was 22.2% (batch; v: 2.00x, 1.60x)" in text and "Batch ms per image in those parts" not in text


def test_a_timing_process_that_fails_or_dies_gives_one_line_and_leaves_no_process(own_run, home):
    import multiprocessing

    invoke("compress", "--run-dir", str(own_run), "--variant", "baseline")
    settings = bench.BenchSettings(threads=1, warmup=1, min_time=0.01)
    folders = {"baseline": own_run / "variants" / "baseline"}
    broken = {"broken": own_run / "variants" / "missing"}
    with pytest.raises(VggtoolError, match="in the timing process: "):
        bench.ProcessTimer(broken, split(32), settings)
    timer = bench.ProcessTimer(folders, split(32), settings)
    assert timer.pid != os.getpid()
    timing, single = timer.block("baseline", (0, 0))
    assert timing.seconds >= 0.01 and len(single) >= 3
    timer.process.kill()
    timer.process.join(10)
    with pytest.raises(VggtoolError, match="ended unexpectedly"):
        timer.block("baseline", (0, 0))
    timer.abandon()
    assert not [c for c in multiprocessing.active_children() if c.name == "vggtool-timing"]


def test_a_time_budget_plans_as_many_rounds_as_fit_within_bounds():
    assert bench.planned_rounds(30, 0.0, 5, 1.0) == 30  # no budget: exactly the fewest
    assert bench.planned_rounds(30, 300.0, 10, 20.0) == 150  # 2 s a round so far: 150 fit in 300 s
    assert bench.planned_rounds(30, 300.0, 10, 200.0) == 30  # slower than the budget: still the fewest
    assert bench.planned_rounds(30, 1e6, 1, 0.01) == bench.MAX_ROUNDS
    assert bench.planned_rounds(30, 300.0, 0, 0.0) == 30


def test_bench_adds_rounds_while_the_time_budget_lasts(own_run, home, tmp_path):
    invoke("compress", "--run-dir", str(own_run), "--variant", "baseline")
    started = time.perf_counter()
    invoke("bench", "--run-dir", str(own_run), "--variant", "baseline", "--rounds", "2", "--time-budget", "2",
           "--min-time", "0.01", "--idle-gap", "0", "--warmup", "1", "--threads", "1", "--accuracy-images", "20",
           "--repeat-check", "--results-dir", str(tmp_path))
    took = time.perf_counter() - started
    results = json.loads((tmp_path / "results.json").read_text())
    (row,) = results["rows"]
    assert results["settings"]["time_budget"] == 2.0
    # a round of two 10 ms blocks fits many times in 2 s; both passes ran the first pass's count
    assert row["rounds"] > 2 * 10 and row["rounds"] % 2 == 0
    assert took < 2 * 2 + 60  # two passes of about 2 s each, plus loading and scoring
    assert 2 * 2 <= results["environment"]["bench_seconds"] <= took  # its own wall time, inside the command's
    assert "as many as a 2 s budget allowed, at least 2" in (tmp_path / "REPORT.md").read_text()


def test_batch1_times_with_a_predictor_of_known_cost():
    times = bench.batch1_times(sleeper(5), [x for x, _ in bench.prepare(split(8), 1)], warmup=3, calls=20)
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

    times = bench.batch1_times(predict, Inputs([torch.zeros(1, 3, 32, 32)] * 4), warmup=0, calls=5,
                               clock=lambda: now[0])
    assert times == pytest.approx([1.0, 4.0, 2.0, 7.0, 3.0])


def test_results_name_the_commit_and_say_when_the_code_was_modified(tmp_path):
    import re
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    assert bench.git_commit(repo) == "unknown"  # not a checkout (tmp_path lies outside any repository)

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                       capture_output=True)

    git("init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    clean = bench.git_commit(repo)
    assert re.fullmatch(r"[0-9a-f]{7,}", clean)
    (repo / "notes.txt").write_text("untracked files do not change what ran\n")
    assert bench.git_commit(repo) == clean
    (repo / "code.py").write_text("x = 2\n")
    assert bench.git_commit(repo) == clean + "-dirty"
    git("commit", "-q", "-am", "two")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "mod.py").write_text("y = 1\n")
    (repo / "results.json").write_text("{}\n")
    git("add", ".")
    git("commit", "-q", "-m", "three")
    package = bench.git_commit(repo / "pkg")
    (repo / "results.json").write_text('{"rows": []}\n')  # a bench's results, written into the checkout
    assert bench.git_commit(repo / "pkg") == package  # outside the package's folder: the code is as committed
    (repo / "pkg" / "mod.py").write_text("y = 2\n")
    assert bench.git_commit(repo / "pkg") == package + "-dirty"


def test_cpu_list_parsing():
    import os

    available = sorted(os.sched_getaffinity(0))
    assert bench.parse_cpus(f"{available[0]}") == (available[0],)
    assert bench.parse_cpus(None) == ()
    with pytest.raises(VggtoolError, match="not available"):
        bench.parse_cpus("0-4095")
    with pytest.raises(VggtoolError, match="cannot parse"):
        bench.parse_cpus("zero")


def test_pareto_front():
    points = [(1.0, 0.5, "a"), (2.0, 0.4, "b"), (3.0, 0.45, "c"), (0.5, 0.9, "d")]
    assert [p[2] for p in report.pareto(points)] == ["d", "a", "b"]


def fixture():
    """Results as written before the batched figures were renamed (b16_*)."""
    return json.loads((FIXTURES / "results.json").read_text())


def renamed(results):
    names = {"b16_ms": "batch_ms", "b16_ms_min": "batch_ms_min", "b16_ms_max": "batch_ms_max",
             "b16_speedup": "batch_speedup"}
    return {**results, "rows": [{names.get(k, k): v for k, v in row.items()} for row in results["rows"]]}


@pytest.mark.parametrize("naming", [fixture, lambda: renamed(fixture())], ids=["b16 fields", "batch fields"])
def test_report_markdown_matches_golden(naming):
    assert report.render_markdown(naming()) == (FIXTURES / "REPORT.golden.md").read_text()


@pytest.mark.parametrize("naming", [fixture, lambda: renamed(fixture())], ids=["b16 fields", "batch fields"])
def test_console_table_matches_golden(naming):
    assert report.render_console(naming(), width=100) == (FIXTURES / "console.golden.txt").read_text()


def test_the_console_table_keeps_every_figure_whole_at_100_columns_with_long_names():
    results = renamed(fixture())
    results["rows"][4]["variant"] = "structured-0.7-kd-finetuneepochs8+static-int8-fused-enginex86"
    out = report.render_console(results, width=100)
    assert max(len(line) for line in out.splitlines()) <= 100 and "…" not in out
    for r in results["rows"]:
        if r["status"] == "ok":
            row = next(line for line in out.splitlines() if line.startswith(f"│ {r['variant'][:26]} "))
            for figure in (f"{r['batch_ms']:.2f}", f"{r['batch_speedup']:.2f}", f"{r['b1_ms_median']:.2f}",
                           f"{r['b1_speedup']:.2f}", f"{r['size_mb']:.2f}"):
                assert f" {figure} " in row, (figure, row)


def test_batched_columns_are_titled_with_the_batch_size():
    results = fixture()
    results["settings"]["batch_size"] = 32
    console, markdown = report.render_console(results, width=140), report.render_markdown(results)
    assert "at batch 32 and 1" in console and "b32 ms" in console and "b16" not in console
    assert "ms/image b32 (min-max) | Speed-up b32 |" in markdown and "b16" not in markdown


def test_old_results_load_in_the_current_naming(tmp_path):
    shutil.copy(FIXTURES / "results.json", tmp_path / "results.json")
    assert report.load_results(tmp_path)["rows"] == renamed(fixture())["rows"]


def test_publish_writes_results_report_and_plots(tmp_path):
    written = report.publish(fixture(), tmp_path)
    assert [p.name for p in written] == ["results.json", "results.csv", "REPORT.md", "error_vs_latency.png", "size.png"]
    assert all(p.stat().st_size > 0 for p in written)
    assert "batch_ms,batch_ms_min,batch_ms_max,batch_speedup" in (tmp_path / "results.csv").read_text()
    assert "b16_ms" not in (tmp_path / "results.json").read_text()


@pytest.mark.parametrize("content", ['["rows"]', '{"rows": {}, "environment": {}, "settings": {}}',
                                     '{"rows": [1], "environment": {}, "settings": {}}',
                                     '{"rows": [], "settings": {}}', '{"rows": [], "environment": {}}'])
def test_results_of_the_wrong_shape_are_refused_and_kept(tmp_path, content):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(VggtoolError, match="cannot be parsed") as e:
        report.check_writable(tmp_path)
    assert "\n" not in str(e.value)
    assert (tmp_path / "results.json").read_text() == content


def crowded(points):
    """The fixture's ok variants moved to `points` (ms, top-1 error)."""
    results = renamed(fixture())
    rows = [r for r in results["rows"] if r["status"] == "ok"]
    for row, (ms, err) in zip(rows, points, strict=True):
        row.update(batch_ms=ms, top1_err=err)
    return {**results, "rows": rows}


@pytest.mark.parametrize("results, scale", [
    (fixture(), "linear"),
    # seven variants on one spot (a few pixels apart), one far away
    (crowded([(4.40 + 0.005 * i, 0.33 + 0.0002 * i) for i in range(7)] + [(1.2, 0.45)]), "linear"),
    (crowded([(4.0 + 0.01 * i, 0.33 + 0.0002 * i) for i in range(7)] + [(0.3, 0.45)]), "log"),  # latencies > 10x apart
])
def test_plot_labels_do_not_overlap(results, scale):
    fig, labels = report.error_vs_latency(results)
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert len(boxes) == 8 and ax.get_xscale() == scale
    for (a, box_a), (b, box_b) in itertools.combinations(zip(labels, boxes), 2):
        assert not box_a.overlaps(box_b), f"{a.get_text()} overlaps {b.get_text()}"
    points, frame = ax.transData.transform([label.xy for label in labels]), ax.get_window_extent(renderer)
    for label, box in zip(labels, boxes):
        assert box.count_contains(points) == 0, f"{label.get_text()} covers a marker"
        assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1), f"{label.get_text()} leaves the axes"


def test_report_command_renders_without_measuring(tmp_path, workspace):
    shutil.copy(FIXTURES / "results.json", tmp_path / "results.json")
    out = invoke("report", "--results-dir", str(tmp_path), "--copy-to", str(tmp_path / "copy")).output
    assert "vggtool bench" in out and "REPORT.md" in out
    assert (tmp_path / "REPORT.md").read_text() == (FIXTURES / "REPORT.golden.md").read_text()
    for name in ("REPORT.md", "results.json", "error_vs_latency.png", "size.png"):
        assert (tmp_path / "copy" / name).stat().st_size > 0
    assert (tmp_path / "size.png").read_bytes()[:4] == b"\x89PNG"


def test_unparseable_results_are_never_overwritten(tmp_path, trained_run, home):
    (tmp_path / "results.json").write_text("{not json")
    one_line_error(invoke("report", "--results-dir", str(tmp_path), ok=False), "cannot be parsed")
    one_line_error(invoke("bench", "--run-dir", str(trained_run), "--results-dir", str(tmp_path), ok=False),
                   "cannot be parsed")
    assert (tmp_path / "results.json").read_text() == "{not json"


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
                 "--variant", "onnx-fp32", "--variant", "broken", "--quick", "--rounds", "3", "--time-budget", "0",
                 "--threads", "1",
                 "--min-time", "0.1", "--repeat-check", "--fresh-process", "--results-dir", str(tmp_path)).output
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["variant"]: r for r in results["rows"]}
    assert rows["broken"]["status"].startswith("failed") and "broken" in out
    for name in ("baseline", "static-int8-fused", "onnx-fp32"):
        assert rows[name]["status"] == "ok" and rows[name]["images_accuracy"] == 100
        assert rows[name]["batch_ms"] > 0 and rows[name]["b1_ms_median"] > 0
        assert rows[name]["rounds"] == 2 * 3  # two passes of three rounds, pooled: enough for an interval
        assert rows[name]["batch_speedup_lo"] <= rows[name]["batch_speedup"] <= rows[name]["batch_speedup_hi"]
        assert rows[name]["b1_speedup_lo"] <= rows[name]["b1_speedup"] <= rows[name]["b1_speedup_hi"]
        assert rows[name]["batch_ms_lo"] <= rows[name]["batch_ms"] <= rows[name]["batch_ms_hi"]
        # whole batches of 16 only (the 100 test images end in a batch of 4, never timed); means rounded apart
        assert rows[name]["images_timed"] >= 16 and rows[name]["images_timed"] == pytest.approx(
            16 * rows[name]["calls_timed"], abs=8)
    assert rows["baseline"]["batch_speedup"] == pytest.approx(1.0)
    spread = results["repeat_check"]
    assert set(spread["variants"]) == {"baseline", "static-int8-fused", "onnx-fp32"}
    assert spread["batch_speedup_max_rel_diff"] >= 0 and "## Run-to-run spread" in (tmp_path / "REPORT.md").read_text()
    assert results["settings"]["protocol"] == "time" and results["settings"]["min_time"] == 0.1
    assert results["environment"]["torch_threads"] == 1
    assert results["environment"]["torch"] == torch.__version__
    report_text = (tmp_path / "REPORT.md").read_text()
    assert "Post-Training Static Fuse" in report_text and "(95% interval)" in report_text
    assert "paired bootstrap interval over the parts, then the rounds within each part" in report_text
    assert results["environment"]["timing_processes"] == 2 * 3  # each of the 3 parts of both passes in its own
    assert "3 parts of a pass, each part timed in a fresh process" in report_text
    assert {len(v["b1_speedup"]) for v in results["parts"]["variants"].values()} == {2 * 3}
    assert "## Spread between parts" in report_text
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("variant,method,type,status") and len(csv_lines) == 5
    assert set(REGISTRY) >= {"baseline", "static-int8-fused", "onnx-fp32"}


def test_balanced_subset_takes_the_first_images_of_every_class():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    data = Split(torch.arange(10).view(10, 1, 1, 1).to(torch.uint8), labels)
    sub = bench.balanced_subset(data, 6)
    assert sub.images.flatten().tolist() == [0, 1, 2, 3, 4, 6]  # two of each class, in the split's order
    assert bench.balanced_subset(data, 0) is data and bench.balanced_subset(data, 10) is data
    assert len(bench.balanced_subset(data, 8)) == 6  # rounded down to a multiple of the 3 classes
    with pytest.raises(VggtoolError, match="below the 3 classes"):
        bench.balanced_subset(data, 2)


def test_report_protocol_times_every_image_once(own_run, home, tmp_path):
    invoke("compress", "--run-dir", str(own_run), "--variant", "baseline")
    invoke("bench", "--run-dir", str(own_run), "--protocol", "report", "--rounds", "1", "--time-budget", "0",
           "--single-calls", "3",
           "--threads", "1", "--accuracy-images", "50", "--results-dir", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    (row,) = results["rows"]
    assert (row["images_timed"], row["calls_timed"]) == (100, 7)  # 100 test images in batches of 16
    assert row["images_accuracy"] == 50  # 5 of each of the 10 classes; timing still on all 100
    report_text = (tmp_path / "REPORT.md").read_text()
    assert "Runtime is the report's protocol" in report_text
    assert "Errors over 50 test images, a class-balanced subset of the 100" in report_text


def test_compare_states_how_far_each_speedup_moved_between_two_benches(tmp_path, workspace):
    first, second = tmp_path / "a", tmp_path / "b"
    results = renamed(fixture())
    moved_results = json.loads(json.dumps(results))
    for row in moved_results["rows"]:
        if row["variant"] == "static-int8-fused":  # batch 3.6446 -> 4.0, b1 unchanged
            row["batch_speedup"] = 4.0
    for row in results["rows"] + moved_results["rows"]:  # intervals of +-1% on the batch speed-ups only
        mid = row["batch_speedup"] or 1.0
        row.update(batch_speedup_lo=mid * 0.99, batch_speedup_hi=mid * 1.01)
    moved_results["environment"]["bench_seconds"] = 512.3
    for row in moved_results["rows"]:
        if row["variant"] == "baseline":  # the machine ran slower: 4.41 -> 4.9 ms per image, b1 18.2 ms unchanged
            row["batch_ms"] = 4.9
    for row in moved_results["rows"]:
        row["rounds"] = row["rounds"] and 5
    for folder, content in ((first, results), (second, moved_results)):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(content))
    cmp = report.compare(report.load_results(first), report.load_results(second))
    assert cmp["batch_speedup_max_rel_diff"] == pytest.approx((4.0 - 3.6446) / ((4.0 + 3.6446) / 2))
    assert cmp["b1_speedup_max_rel_diff"] == 0.0
    assert cmp["variants"]["static-int8-fused"]["batch_overlap"] is False  # 3.61-3.68 against 3.96-4.04
    assert cmp["variants"]["onnx-fp32"]["batch_overlap"] is True and cmp["variants"]["onnx-fp32"]["b1_overlap"] is None
    assert "prune-global-0.8" not in cmp["variants"]  # failed in both: not compared
    out = invoke("compare", str(first), str(second), "--write", str(tmp_path / "SPREAD.md")).output
    assert "largest difference: 9.3% (batch), 0.0% (batch 1)" in out
    text = (tmp_path / "SPREAD.md").read_text()
    assert "**9.3% (batch)**" in text and "3.64x / 4.00x (9.3%), intervals apart" in text
    # the first has no wall time on record (written before bench_seconds), the second does
    assert "The benches took ? and 512 s (data, loading, scoring and timing; not the interpreter's start); they " \
           "timed 3 and 5 rounds." in text
    assert "The benches took ? and 512 s" in out
    assert cmp["baseline_ms"] == {"batch": [4.41, 4.9], "b1": [18.2, 18.2]}
    drift = "The baseline's own time moved 10.5% in batches (4.410 / 4.900 ms per image) and 0.0% at batch 1 " \
            "(18.200 / 18.200 ms); a speed-up cancels such a move only where it changed both variants' times alike."
    assert drift in text and drift in " ".join(out.split())
    results["environment"]["bench_seconds"] = 498.0
    (first / "results.json").write_text(json.dumps(results))
    invoke("compare", str(first), str(second), "--write", str(tmp_path / "SPREAD.md"))
    assert "The benches took 498 s and 512 s" in (tmp_path / "SPREAD.md").read_text()
    quiet = report.compare(report.load_results(first), report.load_results(second))  # neither time nor rounds
    quiet.update(bench_seconds=[None, None], rounds=[0, 0])
    assert report.durations(quiet) == "" and "The benches" not in report.render_comparison(quiet, ("a", "b"))
    quiet["baseline_ms"] = None  # no baseline in one of them: nothing said about it
    assert report.baseline_moved(quiet) == "" and "baseline's own" not in report.render_comparison(quiet, ("a", "b"))
    assert report.durations({**quiet, "rounds": [3, 6], "passes": [1, 2]}) == \
        "The benches timed 3 and 6 rounds (the second over its two --repeat-check passes)."
    out_md = tmp_path / "never.md"
    one_line_error(invoke("compare", str(first), str(tmp_path / "nothing"), "--write", str(out_md), ok=False),
                   "no results.json")
    one_line_error(invoke("compare", str(first), str(second), "--write", str(second / "results.json"), ok=False),
                   "refusing to write markdown over a results.json")
    one_line_error(invoke("compare", str(first), str(second), "--write", str(tmp_path / "SPREAD.md" / "x.md"),
                          ok=False), "cannot write")
    (second / "results.json").write_text(json.dumps({**moved_results, "rows": [moved_results["rows"][-1]]}))
    one_line_error(invoke("compare", str(first), str(second), "--write", str(out_md), ok=False),
                   "share no measured variant")
    assert not out_md.exists() and json.loads((first / "results.json").read_text()) == results


def test_load_parts_only_advance_when_a_time_budget_grows_the_plan():
    assert [bench.load_part(0, r, 30, 3) for r in (0, 9, 10, 20, 29, 30)] == [0, 0, 1, 2, 2, 0]  # none after the last
    part, reloads = 0, []
    for r in range(1, 45):  # 30 rounds planned, then 45 once the pace is known: a boundary moves past round 10
        planned = 30 if r < 12 else 45
        if bench.load_part(part, r, planned, 3) > part:
            part = bench.load_part(part, r, planned, 3)
            reloads.append(r)
    assert reloads == [10, 30]  # two reloads for three parts, never the first boundary twice


def test_each_part_of_a_pass_loads_every_variant_afresh(own_run, home, tmp_path, monkeypatch):
    invoke("compress", "--run-dir", str(own_run), "--variant", "baseline", "--variant", "static-int8-fused")
    loaded = []
    real = bench.load_variant

    def counting(folder, threads):
        loaded.append(Path(folder).name)
        return real(folder, threads)

    monkeypatch.setattr(bench, "load_variant", counting)  # seen in this process only: --same-process
    invoke("bench", "--run-dir", str(own_run), "--variant", "baseline", "--variant", "static-int8-fused", "--rounds",
           "6", "--time-budget", "0", "--loads", "3", "--min-time", "0.01", "--warmup", "1", "--threads", "1",
           "--accuracy-images", "20", "--repeat-check", "--same-process", "--results-dir", str(tmp_path))
    # once to score accuracy, then afresh for each of the 3 parts of both passes
    assert loaded.count("baseline") == loaded.count("static-int8-fused") == 1 + 3 + 3
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["loads"] == 3 and {r["rounds"] for r in results["rows"]} == {12}
    assert results["environment"]["timing_processes"] == 0  # all timed here
    report_text = (tmp_path / "REPORT.md").read_text()
    assert "every variant loaded afresh for each of 3 parts of a pass)" in report_text
    assert "fresh process" not in report_text
    one_line_error(invoke("bench", "--run-dir", str(own_run), "--loads", "0", ok=False), "loads must be positive")


def test_the_report_states_each_fine_tuning_its_epochs_precision_and_minutes():
    results = fixture()
    results["finetune"] = {
        "prune-global-0.6": {"history": [{"epoch": 0, "precision": "bf16", "seconds": 150.0, "val_top1_err": 0.41},
                                         {"epoch": 1, "precision": "bf16", "seconds": 90.0, "val_top1_err": 0.40}]},
        "static-int8": [{"history": [{"epoch": 0, "precision": "fp32", "seconds": 30.0, "val_top1_err": 0.4}]},
                        {"history": [{"epoch": 0, "precision": "fp32", "seconds": 60.0, "val_top1_err": 0.45}]}],
        "dynamic-int8": {"history": [{"epoch": 0, "val_top1_err": 0.5}]},  # written before precision and seconds
    }
    md = report.render_markdown(results)
    section = md.split("## Fine-tuning")[1].split("\n## ")[0]
    assert "| `prune-global-0.6` | 2 | bf16 | 4.0 | 0.400 | 0.370 |" in section
    assert "| `static-int8` | 2 | fp32 | 1.5 | 0.450 | 0.336 |" in section  # the last round's best was kept
    assert "| `dynamic-int8` | 1 | ? | - | 0.500 | 0.333 |" in section
    assert "## Fine-tuning" not in report.render_markdown(fixture())


def test_the_summary_names_the_fastest_and_smallest_within_one_point_of_the_baseline():
    def row(name, top1, b1, batch, size):
        return {"variant": name, "method": name.title(), "type": "int8", "status": "ok", "top1_err": top1,
                "top5_err": 0.1, "b1_speedup": b1, "batch_speedup": batch, "size_mb": size, "b1_ms_median": 10.0 / b1,
                "batch_ms": 4.0 / batch}

    rows = [row("baseline", 0.400, 1.0, 1.0, 160.0), row("quick-but-wrong", 0.420, 30.0, 30.0, 1.0),
            row("fast-b1", 0.405, 12.0, 5.0, 40.0), row("fast-batch", 0.409, 8.0, 9.0, 30.0),
            row("tiny", 0.410, 1.1, 1.0, 3.2)]
    lines = report._summary(rows, 16, {"cpu_model": "Test CPU", "cpu_flags": "avx2"})[2].splitlines()
    assert lines == [
        "- **Baseline** `baseline`: top-1 / top-5 error 0.400 / 0.100, 10.00 ms per image at batch 1, 4.00 at batch 16, "
        "160.00 MB.",
        "- **Fastest at batch 1** within 1 point: `fast-b1` (Fast-B1), top-1 error 0.405 (+0.5 points), 12.00x at "
        "batch 1, 5.00x at batch 16, 40.00 MB (4.0x smaller).",
        "- **Fastest at batch 16** within 1 point: `fast-batch` (Fast-Batch), top-1 error 0.409 (+0.9 points), 8.00x at "
        "batch 1, 9.00x at batch 16, 30.00 MB (5.3x smaller).",
        "- **Smallest** within 1 point: `tiny` (Tiny), top-1 error 0.410 (+1.0 points), 1.10x at batch 1, 1.00x at "
        "batch 16, 3.20 MB (50.0x smaller).",
    ]
    assert report._summary([rows[0], rows[1]], 16, {})[2].splitlines()[1:] == [
        f"- **{t}**: no variant within 1 point of the baseline's error."
        for t in ("Fastest at batch 1", "Fastest at batch 16", "Smallest")]
