"""Report rendering against golden text (the bench itself: test_bench.py)."""

import itertools
import json
import shutil
from pathlib import Path

import pytest

from vggtool import report
from vggtool.bench.rows import part_spread
from vggtool.bench.timing import Timing
from vggtool.errors import VggtoolError

from .conftest import invoke, one_line_error

FIXTURES = Path(__file__).parent / "fixtures"


def test_the_spread_between_parts_reports_the_injected_difference():
    def timings(*ms):
        return [Timing((m,), 16, m / 1000 * 16) for m in ms]

    batched = {"baseline": timings(8.0, 8.0, 8.0, 8.0), "v": timings(4.0, 4.0, 5.0, 5.0)}
    b1 = {"baseline": [[2.0]] * 4, "v": [[1.0], [1.0], [1.0], [1.0]]}
    between = part_spread(batched, b1, "baseline", [0, 0, 1, 1], "time")
    assert between["variants"]["v"]["batch_speedup"] == [2.0, 1.6]  # each part's rounds alone
    assert between["batch_speedup_max_range"] == pytest.approx(0.4 / 1.8) and between["b1_speedup_max_range"] == 0
    assert between["variants"]["v"]["batch_ms"] == [4.0, 5.0] and between["variants"]["baseline"]["batch_ms"] == [8.0, 8.0]
    text = report.render_markdown({**json.loads((FIXTURES / "results.json").read_text()), "parts": between})
    assert "widest range between parts (relative to their mean) was 22.2% (batch; v: 2.00x, 1.60x) and 0.0% (batch 1" in text
    assert "Batch ms per image in those parts: v 4.00, 5.00, baseline 8.00, 8.00." in text  # the variant moved
    older = {k: v for k, v in between.items() if k != "baseline"}  # results.json from before the per-part ms
    text = report.render_markdown({**json.loads((FIXTURES / "results.json").read_text()), "parts": older})
    assert "was 22.2% (batch; v: 2.00x, 1.60x)" in text and "Batch ms per image in those parts" not in text


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


def test_the_console_table_keeps_every_figure_whole_at_100_columns_with_long_labels():
    results = renamed(fixture())
    results["rows"][4]["variant"] = "structured-0.7-kd-finetuneepochs8+static-int8-fused-enginex86"
    results["rows"][5]["variant"] = "a-variant-name-no-recipe-reads-and-longer-than-any-column-of-the-table"
    out = report.render_console(results, width=100)
    assert max(len(line) for line in out.splitlines()) <= 100 and "…" not in out
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    starts = [c for c in cells if c[1]]  # each row's first line holds all its figures
    rows = report.ordered(report.upgrade(results)["rows"])
    assert len(starts) == len(rows)
    for r, first in zip(rows, starts):
        assert r["label"].startswith(first[0])
        if r["status"] == "ok":
            assert first[2:7] == [f"{r['batch_ms']:.2f}", f"{r['batch_speedup']:.2f}", f"{r['b1_ms_median']:.2f}",
                                  f"{r['b1_speedup']:.2f}", f"{r['size_mb']:.2f}"]


def test_batched_columns_are_titled_with_the_batch_size():
    results = fixture()
    results["settings"]["batch_size"] = 32
    console, markdown = report.render_console(results, width=140), report.render_markdown(results)
    assert "at batch 32 and 1" in console and "b32 ms" in console and "b16" not in console
    assert "ms/image b32 (min-max) | Speed-up b32 |" in markdown and "b16" not in markdown


def test_old_results_load_in_the_current_naming(tmp_path):
    shutil.copy(FIXTURES / "results.json", tmp_path / "results.json")
    loaded = report.load_results(tmp_path)["rows"]
    assert [{k: row[k] for k in old} for row, old in zip(loaded, renamed(fixture())["rows"], strict=True)] == \
        renamed(fixture())["rows"]


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


ALONE = ["1, 2", "3", "4", "5", "6", "7", "8"]  # baseline and dynamic-fp16: 4.41 and 4.38 ms at one error
CLUSTER = ["1, 2, 3, 4, 5, 6, 7", "8"]


@pytest.mark.parametrize("results, scale, texts", [
    (fixture(), "linear", ALONE),
    # seven variants on one spot (a few pixels apart), one far away
    (crowded([(4.40 + 0.005 * i, 0.33 + 0.0002 * i) for i in range(7)] + [(1.2, 0.45)]), "linear", CLUSTER),
    (crowded([(4.0 + 0.01 * i, 0.33 + 0.0002 * i) for i in range(7)] + [(0.3, 0.45)]), "log", CLUSTER),  # > 10x apart
])
def test_plot_labels_do_not_overlap(results, scale, texts):
    fig, labels = report.error_vs_latency(results)
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    assert ax.get_xscale() == scale
    numbers = sorted(int(n) for label in labels for n in label.get_text().split(", "))
    assert numbers == list(range(1, 9))  # every point numbered once: alone, or in its cluster's label
    keys = [t for t in fig.texts]
    assert [t.get_text().split(maxsplit=1)[1] for t in keys] == [r["label"] for r in report.ordered(
        report.upgrade(results)["rows"]) if r["status"] == "ok"]
    for group in (labels, keys):
        boxes = [t.get_window_extent(renderer) for t in group]
        for (a, box_a), (b, box_b) in itertools.combinations(zip(group, boxes), 2):
            assert not box_a.overlaps(box_b), f"{a.get_text()} overlaps {b.get_text()}"
    frame = fig.bbox
    for t in labels + keys:
        box = t.get_window_extent(renderer)
        assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1), f"{t.get_text()} leaves the figure"
    assert [t.get_text() for t in labels] == texts  # numbers that would touch share a label


def test_plot_keys_twenty_variants_without_overlap():
    results = renamed(fixture())
    template = next(r for r in results["rows"] if r["variant"] == "static-int8")
    results["rows"] = [dict(results["rows"][0])] + [
        {**template, "variant": f"structured-0.{i + 10}-kd", "batch_ms": 1.0 + 0.002 * i, "top1_err": 0.34 + 1e-4 * i}
        for i in range(23)]
    fig, labels = report.error_vs_latency(results)
    renderer = fig.canvas.get_renderer()
    for group in (labels, fig.texts):
        boxes = [t.get_window_extent(renderer) for t in group]
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    assert len(fig.texts) == 24 and all(fig.bbox.contains(*t.get_window_extent(renderer).p1) for t in fig.texts)


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
    assert report.durations({**quiet, "rounds": [3, 6]}) == "The benches timed 3 and 6 rounds."
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


def test_the_report_states_each_fine_tuning_its_epochs_lr_precision_and_minutes():
    results = fixture()
    results["finetune"] = {
        "prune-global-0.6": {"lr": 0.01,
                             "history": [{"epoch": 0, "precision": "bf16", "seconds": 150.0, "val_top1_err": 0.41},
                                         {"epoch": 1, "precision": "bf16", "seconds": 90.0, "val_top1_err": 0.40}]},
        "static-int8": [{"lr": 0.001, "history": [{"epoch": 0, "precision": "fp32", "seconds": 30.0,
                                                   "val_top1_err": 0.4}]},
                        {"lr": 0.0001, "history": [{"epoch": 0, "precision": "fp32", "seconds": 60.0,
                                                    "val_top1_err": 0.45}]}],
        "dynamic-int8": {"history": [{"epoch": 0, "val_top1_err": 0.5}]},  # written before precision and seconds
    }
    md = report.render_markdown(results)
    section = md.split("## Fine-tuning")[1].split("\n## ")[0]
    assert "| global L1 0.6 | 2 | 0.01 | bf16 | 4.0 | 0.400 | 0.370 |" in section
    assert "| static int8 | 2 | 0.001, 0.0001 | fp32 | 1.5 | 0.450 | 0.336 |" in section  # the last round's best kept
    assert "| dynamic int8 | 1 | - | ? | - | 0.500 | 0.333 |" in section
    assert "## Fine-tuning" not in report.render_markdown(fixture())


def test_the_summary_names_the_fastest_and_smallest_within_one_point_of_the_baseline():
    def row(name, top1, b1, batch, size):
        return {"variant": name, "method": name.title(), "type": "int8", "status": "ok", "top1_err": top1,
                "top5_err": 0.1, "b1_speedup": b1, "batch_speedup": batch, "size_mb": size, "b1_ms_median": 10.0 / b1,
                "batch_ms": 4.0 / batch}

    rows = [row("baseline", 0.400, 1.0, 1.0, 160.0), row("quick-but-wrong", 0.420, 30.0, 30.0, 1.0),
            row("fast-b1", 0.405, 12.0, 5.0, 40.0), row("fast-batch", 0.409, 8.0, 9.0, 30.0),
            row("tiny", 0.410, 1.1, 1.0, 3.2)]
    def summary(rows, env):
        return report.summary(report.upgrade({"rows": rows})["rows"], 16, report.upgrade({"rows": [],
                                                                                          "environment": env})[
            "environment"])

    lines = summary(rows, {"cpu_model": "Test CPU", "cpu_flags": "avx2"})[2].splitlines()
    assert lines == [
        "- **Baseline**: top-1 / top-5 error 0.400 / 0.100, 10.00 ms per image at batch 1, 4.00 at batch 16, 160.00 MB.",
        "- **Fastest at batch 1** within 1 point: fast-b1 (top-1 error 0.405, +0.5 points; 12.00x at batch 1, 5.00x at "
        "batch 16; 40.00 MB, 4.0x smaller).",
        "- **Fastest at batch 16** within 1 point: fast-batch (top-1 error 0.409, +0.9 points; 8.00x at batch 1, 9.00x "
        "at batch 16; 30.00 MB, 5.3x smaller).",
        "- **Smallest** within 1 point: tiny (top-1 error 0.410, +1.0 points; 1.10x at batch 1, 1.00x at batch 16; "
        "3.20 MB, 50.0x smaller).",
    ]
    # one variant fastest at both batch sizes: one line that says so
    both = [rows[0], row("fast", 0.405, 12.0, 9.0, 40.0), rows[4]]
    assert summary(both, {})[2].splitlines()[1:] == [
        "- **Fastest at batch 1 and at batch 16** within 1 point: fast (top-1 error 0.405, +0.5 points; 12.00x at "
        "batch 1, 9.00x at batch 16; 40.00 MB, 4.0x smaller).",
        "- **Smallest** within 1 point: tiny (top-1 error 0.410, +1.0 points; 1.10x at batch 1, 1.00x at batch 16; "
        "3.20 MB, 50.0x smaller)."]
    small_and_fast = [rows[0], row("fast-b1", 0.405, 12.0, 5.0, 3.0), rows[3]]
    assert [line.split(" within")[0] for line in summary(small_and_fast, {})[2].splitlines()[1:]] == [
        "- **Fastest at batch 1 and smallest**", "- **Fastest at batch 16**"]
    assert summary([rows[0], rows[4]], {})[2].splitlines()[1].startswith(  # the only one within the budget
        "- **Fastest at batch 1, at batch 16 and smallest** within 1 point: tiny")
    assert summary([rows[0], rows[1]], {})[2].splitlines()[1:] == [
        f"- **{t}**: no variant within 1 point of the baseline's error."
        for t in ("Fastest at batch 1", "Fastest at batch 16", "Smallest")]


def test_the_report_names_the_layers_each_int8_file_kept_in_float():
    results = fixture()
    results["float_layers"] = {"static-int8": ["/features/features.0/Conv", "/classifier/classifier.6/Gemm"],
                               "dynamic-int8": []}
    md = report.render_markdown(results)
    section = md.split("## Layers kept in float")[1].split("\n## ")[0]
    assert "| static int8 | `/features/features.0/Conv`, `/classifier/classifier.6/Gemm` |" in section
    assert "| dynamic int8 | none: every Conv and Gemm int8 |" in section
    assert "## Layers kept in float" not in report.render_markdown(fixture())


def test_the_report_shows_what_engine_auto_measured_and_kept():
    results = fixture()
    results["engine"] = {"static-int8": {
        "chosen": "x86", "for_batch": 16, "by_batch": {"1": "fbgemm", "16": "x86"}, "margin": 0.03, "rounds": 3,
        "ms_per_image": {"1": {"fbgemm": 1.5, "x86": 2.0}, "16": {"fbgemm": 0.8, "x86": 0.7}},
        "cpu_model": "a CPU", "cpu_flags": "avx512_vnni", "threads": 2}}
    section = report.render_markdown(results).split("## Engine measured per batch size")[1].split("\n## ")[0]
    assert "| static int8 | 1 | 1.500 | 2.000 | fbgemm |  |" in section
    assert "| static int8 | 16 | 0.800 | 0.700 | x86 | **x86** |" in section
    assert "a CPU (flags `avx512_vnni`), 2 threads" in section
    assert "## Engine measured" not in report.render_markdown(fixture())


def test_the_report_carries_the_search_that_chose_a_variant():
    results = fixture()
    results["search"] = {
        "request": {"max_drop": 1.0, "objective": "b1", "budget_minutes": 20.0}, "seconds": 600.0, "candidates": 9,
        "environment": {"cpu_model": "a CPU", "cpu_flags": "avx512_vnni"}, "baseline": {"val_err": 0.40},
        "limit_val_err": 0.41, "test_reads": 1, "why": "the least ms per image at batch 1",
        "chosen": {"key": "static-int8", "val_err": 0.405, "test_err": 0.41, "baseline_test_err": 0.40,
                   "b1_speedup": 4.0, "batch_speedup": 3.0, "size_mb": 40.0},
        "first": {"key": "dynamic-int8", "val_err": 0.401, "b1_speedup": 1.5, "batch_speedup": 1.2, "size_mb": 90.0},
        "front": {"b1": ["static-int8"]}}
    section = report.render_markdown(results).split("## Search")[1].split("\n## ")[0]
    assert "on a CPU (flags: avx512_vnni), 9 candidates in 10.0 of 20 minutes" in section
    assert "| chosen | static int8 | 40.50 | 41.00 | 4.00x | 3.00x | 40.00 |" in section
    assert "| first within the budget | dynamic int8 | 40.10 | - | 1.50x | 1.20x | 90.00 |" in section
    assert "+1.00 points" in section and "dynamic int8 at 1.50x at batch 1" in section


def test_the_rows_not_run_are_grouped_by_reason_and_runtimes_each_variant_named_once():
    from vggtool.report.sections import not_run

    skipped = {"a@openvino": "a torch model runs in torch only", "a@openvino-bf16": "a torch model runs in torch only",
               "b@openvino": "a torch model runs in torch only", "b@openvino-bf16": "a torch model runs in torch only",
               "c": "not built in this run", "d@openvino": "a torch model runs in torch only"}
    assert not_run(skipped) == ("Not run in openvino, openvino-bf16 (a torch model runs in torch only): `a`, `b`. "
                                "Not run (not built in this run): `c`. "
                                "Not run in openvino (a torch model runs in torch only): `d`.")
