"""Golden text on a committed result (the full-size study on the shared model): the summary, the labels and the
console table in a log; upgrade() of old results.json to the current schema; the committed renderings match the renderer."""

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from vggtool import report
from vggtool.compress import REGISTRY, display_label, display_labels

ROOT = Path(__file__).parent.parent
STUDY = ROOT / "results" / "vgg19-shared-model"
GOLDEN = Path(__file__).parent / "golden"
FIXTURES = Path(__file__).parent / "fixtures"

SUMMARY = """\
## Summary

Speed-ups are over the baseline in the same bench, on AMD EPYC (CPU flags `avx2 avx512f avx512_vnni avx_vnni \
avx512_bf16`); errors on 10000 test images.

- **Baseline**: top-1 / top-5 error 0.426 / 0.148, 13.27 ms per image at batch 1, 2.53 at batch 16, 157.39 MB.
- **Fastest at batch 1 and at batch 16** within 1 point: structured 0.7 + int8 (ONNX Runtime), distilled (top-1 \
error 0.420, -0.5 points; 40.72x [39.11-41.56] at batch 1, 10.57x [10.17-10.83] at batch 16; 11.88 MB, 13.2x smaller).
- **Smallest** within 1 point: global L1 0.9 + weight sharing c6/l4, fine-tuned (top-1 error 0.422, -0.4 points; \
1.00x [0.99-1.01] at batch 1, 0.98x [0.97-1.00] at batch 16; 2.73 MB, 57.6x smaller).

"""

LABELS = {
    "baseline": "baseline",
    "dynamic-fp16": "dynamic fp16",
    "dynamic-int8": "dynamic int8",
    "static-int8": "static int8",
    "static-int8-fused": "static int8 fused",
    "prune-global-0.6": "global L1 0.6",
    "prune-local-0.6": "local L1 0.6",
    "onnx-fp32": "ONNX fp32",
    "onnx-int8": "int8 (ONNX Runtime)",
    "prune-global-0.9-linearamount0.97-finetuneepochs2": "global L1 0.9, fine-tuned",
    "prune-global-0.9-linearamount0.97-finetuneepochs2+cluster-c6l4": "global L1 0.9 + weight sharing c6/l4, fine-tuned",
    "prune-global-0.9-linearamount0.97-finetuneepochs2+cluster-c7l4": "global L1 0.9 + weight sharing c7/l4, fine-tuned",
    "prune-global-0.9-linearamount0.97-finetuneepochs2+cluster-c8l5": "global L1 0.9 + weight sharing c8/l5, fine-tuned",
    "qat-int8-finetuneepochs1": "QAT int8",
    "static-int8-fused-enginex86": "static int8 fused (x86)",
    "structured-0.5-kd-finetuneepochs2": "structured 0.5, distilled",
    "structured-0.5-kd-finetuneepochs2+onnx-int8": "structured 0.5 + int8 (ONNX Runtime), distilled",
    "structured-0.5-kd-finetuneepochs2+static-int8-fused": "structured 0.5 + static int8 fused, distilled",
    "structured-0.5-kd-finetuneepochs2+static-int8-fused-enginex86": "structured 0.5 + static int8 fused (x86), distilled",
    "structured-0.7-kd-finetuneepochs8": "structured 0.7, distilled",
    "structured-0.7-kd-finetuneepochs8+onnx-int8": "structured 0.7 + int8 (ONNX Runtime), distilled",
    "structured-0.7-kd-finetuneepochs8+static-int8-fused": "structured 0.7 + static int8 fused, distilled",
    "structured-0.7-kd-finetuneepochs8+static-int8-fused-enginex86": "structured 0.7 + static int8 fused (x86), distilled",
}


@pytest.fixture
def study(tmp_path):
    shutil.copy(STUDY / "results.json", tmp_path / "results.json")
    return report.load_results(tmp_path)


def test_the_summary_of_the_full_size_study(study):
    md = report.render_markdown(study)
    assert md.split("\n\n", 2)[2].startswith(SUMMARY)  # right after the title and the model's line
    after = md[md.index(SUMMARY) + len(SUMMARY):]
    assert after.startswith("## The report's table\n")  # then the report's own table
    table = after.split("\n\n")[2].splitlines()
    assert [line.split(" | ")[0][2:] for line in table[2:]] == [LABELS[n] for n in report.REPORT_ORDER]


def test_the_labels_of_the_full_size_study(study):
    assert {r["variant"]: r["label"] for r in study["rows"]} == LABELS
    md = report.render_markdown(study)
    for name in LABELS:  # each full name once, in the key
        assert md.count(f"`{name}`") == 1, name


def test_the_console_table_of_the_full_size_study_in_a_log_at_100_columns(study):
    console = Console(file=io.StringIO(), width=100, force_terminal=False, color_system=None)
    console.print(report.console_table(study))
    out = console.file.getvalue()
    assert out == (GOLDEN / "vgg19-shared-model-console.txt").read_text()
    assert max(map(len, out.splitlines())) <= 100 and "…" not in out


@pytest.mark.parametrize("folder", sorted(p.parent for p in (ROOT / "results").rglob("results.json")),
                         ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_committed_reports_are_what_the_report_renders(folder):
    results = report.load_results(folder)
    assert (folder / "REPORT.md").read_text() == report.render_markdown(results)
    labels = [r["label"] for r in results["rows"]]
    assert len(set(labels)) == len(labels)


def old_results() -> dict:
    """The oldest layout (tests/fixtures/results.json as first committed: b16_* fields, no subject, no protocol),
    with sections as benches between then and now wrote them: a fine-tuning as one dict, parts without the
    baseline's name."""
    old = json.loads((FIXTURES / "results.json").read_text())
    del old["subject"]
    old["finetune"] = {"prune-global-0.6": {"history": [{"epoch": 0, "val_top1_err": 0.4}]}}
    old["parts"] = {"variants": {"baseline": {"batch_speedup": [1.0, 1.0], "b1_speedup": [1.0, 1.0]}},
                    "batch_speedup_max_range": 0.0, "b1_speedup_max_range": 0.0}
    return old


def test_upgrade_brings_an_old_results_json_to_the_current_schema():
    old = old_results()
    new = report.upgrade(old)
    for row, was in zip(new["rows"], old["rows"], strict=True):
        assert set(report.ROW_FIELDS) <= set(row) and not any(k.startswith("b16_") for k in row)
        assert row["batch_ms"] == was["b16_ms"] and row["batch_speedup"] == was["b16_speedup"]
        assert all(row[k] == v for k, v in was.items() if not k.startswith("b16_"))  # no figure changed
        assert row["batch_ms_lo"] is None and row["macs"] is None  # not measured then
    assert [r["label"] for r in new["rows"]][:3] == ["baseline", "dynamic fp16", "dynamic int8"]
    assert set(report.results.SETTINGS) <= set(new["settings"]) and new["settings"]["protocol"] == "report"
    assert new["settings"]["min_time"] is None and new["settings"]["loads"] == 1
    assert new["subject"] is None and "repeat_check" not in new and new["sensitivity"] == {}
    assert new["finetune"]["prune-global-0.6"] == [{"history": [
        {"precision": None, "seconds": None, "val_top1_err": 0.4, "epoch": 0}]}]
    assert new["parts"]["baseline"] is None
    assert report.upgrade(new) == new  # the current schema comes back as it was
    assert old == old_results()  # the input is left alone


def test_upgrade_keeps_what_an_older_protocol_did():
    old = json.loads((STUDY / "results.json").read_text())
    del old["settings"]["time_budget"]  # benches with the bootstrap but before --time-budget idled before each block
    assert report.upgrade(old)["settings"]["idle_before"] == "block"
    assert "0.05 s idle before each block" in report.render_markdown(old)
    assert "0.05 s idle before each variant's turn" in report.render_markdown(json.loads(
        (STUDY / "results.json").read_text()))


def test_upgrade_labels_rows_once_and_keeps_them_unique():
    rows = [{"variant": "structured-0.5-kd"}, {"variant": "structured-0.5-kd-finetuneepochs12-finetunelr0.02"},
            {"variant": "not+a recipe"}, {"variant": "static-int8", "label": "mine"}]
    labels = [r["label"] for r in report.upgrade({"rows": rows})["rows"]]
    assert labels == ["structured 0.5, distilled (epochs 5, lr 0.01)", "structured 0.5, distilled (epochs 12, lr 0.02)",
                      "not+a recipe", "mine"]
    twice = [{"variant": "static-int8", "label": "same"}, {"variant": "dynamic-int8", "label": "same"}]
    assert [r["label"] for r in report.upgrade({"rows": twice})["rows"]] == ["static int8", "dynamic int8"]


def test_every_registered_recipe_has_a_short_label_of_its_own():
    built_in = [n for n, r in REGISTRY.items() if type(r).__module__.startswith("vggtool.compress.")]
    for name in built_in:  # (a recipe without one would show its name: Recipe.short's fallback for plugins)
        assert REGISTRY[name].short and (REGISTRY[name].short != name or name == "baseline"), name
    labels = display_labels(built_in)
    assert len(set(labels.values())) == len(labels)
    assert display_label("structured-0.7-kd-finetuneepochs8+onnx-int8") == \
        "structured 0.7 + int8 (ONNX Runtime), distilled"
    assert display_label("structured-0.95-finetuneepochs0+static-int8-fused-enginex86") == \
        "structured 0.95 + static int8 fused (x86)"  # built with its own options: read back from the name
    assert display_label("prune-global-0.6-linearamount0.9-finetuneepochs5+cluster-c6l4-finetuneepochs2") == \
        "global L1 0.6 + weight sharing c6/l4, fine-tuned"
    assert display_label("no-such-recipe-0.5") == "no-such-recipe-0.5"


def test_a_recipe_type_that_cannot_name_itself_does_not_stop_the_labels():
    from dataclasses import dataclass

    from vggtool.compress import RECIPE_TYPES, Recipe

    @dataclass(frozen=True)
    class Nameless(Recipe):  # registers itself as a type, but has no stem
        pass

    try:
        assert display_label("structured-0.35-finetuneepochs0") == "structured 0.35"
        assert display_label("nothing-reads-this") == "nothing-reads-this"  # every type tried, Nameless too
    finally:
        del RECIPE_TYPES["Nameless"]
