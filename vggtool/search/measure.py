"""The search's measurements on a run: candidates built as variants of the run (every step its own variant folder,
reused when it exists), validation error from the project's one `evaluate`, timing from the bench's own blocks on
validation images. The test split is read through `SearchData.test` alone, and only by `test_errors`."""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from functools import cached_property
from pathlib import Path

import torch

from vggtool import export
from vggtool import runtimes as rt
from vggtool.bench.rows import speedups, timing_figures
from vggtool.bench.run import Progress, time_variants
from vggtool.bench.settings import BenchSettings
from vggtool.bench.timing import batch1_times, batch_rounds, batch_timing, timing_inputs, warm_up
from vggtool.compress import META_FILE, build_variant, load_variant, read_meta, run_context
from vggtool.compress.artifact import source_from_checkpoint, source_from_variant
from vggtool.compress.quant_onnx import OnnxInt8, layer_sensitivity, weight_nodes
from vggtool.compress.structured import StructuredPrune
from vggtool.data import Split, batches, load_split, load_train_val
from vggtool.evaluate import evaluate, torch_predict
from vggtool.files import read_json, remove_stale_temporaries, write_json
from vggtool.models import macs, param_count
from vggtool.search.space import BASELINE, Candidate, SearchSpace

BATCH = 16  # the bench's protocol batch
EVAL_BATCH = 100


class SearchData:
    """A run's splits, read once each when first asked for; `test_reads` counts every read of the test split."""

    def __init__(self, run, data_dir: Path):
        self.run, self.data_dir, self.test_reads = run, Path(data_dir), 0

    @cached_property
    def _train_val(self) -> tuple[Split, Split]:
        cfg = self.run.config()
        return load_train_val(self.data_dir, cfg.val_size, cfg.seed, cfg.train_subset)

    @property
    def train(self) -> Split:
        return self._train_val[0]

    @property
    def val(self) -> Split:
        return self._train_val[1]

    @property
    def test(self) -> Split:
        self.test_reads += 1
        return Split(*load_split(self.data_dir, "test"))


class RunMeasure:
    """`vggtool.search.engine.Measure` over a run's variants."""

    def __init__(self, run, data: SearchData, space: SearchSpace, threads: int = 0, display=None):
        self.run, self.data, self.space, self.threads = run, data, space, threads
        self.ctx = run_context(run, data.data_dir, display, splits=lambda: data, parity=False)
        self.figures_of: dict[str, dict] = {}

    # ------------------------------------------------------------ building
    def folder(self, name: str) -> Path:
        return self.run.variants_dir / name

    def figures(self, c: Candidate) -> dict:
        """Builds every step of `c` that is not a variant of the run yet; its size, MACs and parameters."""
        remove_stale_temporaries(self.run.variants_dir)
        parent = None
        for name, recipe in c.steps:
            if not (self.folder(name) / META_FILE).exists():
                source = (source_from_variant(self.folder(parent)) if parent
                          else source_from_checkpoint(self.run.baseline_file()))
                build_variant(recipe, source, self.ctx, self.folder(name), name=name)
            parent = name
        meta, _, spec = read_meta(self.folder(c.name))
        return {"size_mb": meta["figures"]["size_mb"], "macs": macs(spec), "params": param_count(spec)}

    def load(self, c: Candidate):
        return load_variant(self.folder(c.name), self.threads, _elsewhere(c))

    # ------------------------------------------------------------ measuring
    def error(self, c: Candidate, images: int) -> float:
        val = self.data.val
        if images:
            val = val.subset(torch.arange(min(images, len(val))))
        return evaluate(self.load(c).predict, batches(val, EVAL_BATCH)).top1_err

    def latency_split(self) -> Split:
        val = self.data.val
        return val.subset(torch.arange(min(len(val), 256)))

    def timing(self, c: Candidate, seconds: float) -> dict:
        """A short timing of `c` alone on validation images: warmed up, then half the time at the bench's batch
        and half at batch 1."""
        predict = self.load(c).predict
        timed, singles = timing_inputs(self.latency_split(), BATCH, "time")
        warm_up(predict, [x for x, _ in timed], 10)
        batch = batch_timing(predict, timed, 3, seconds / 2)
        one = batch1_times(predict, singles, 3, 5, seconds / 2)
        return {"batch_ms": batch.ms_per_image, "b1_ms": statistics.median(one)}

    def bench(self, cs: list[Candidate], seconds: float) -> dict:
        """The bench's interleaved rounds over `cs` (the baseline first) on validation images, for `seconds`;
        each key's ms per image and its speed-ups over the baseline, paired round by round."""
        settings = BenchSettings(threads=self.threads, rounds=5, loads=1, time_budget=seconds, min_time=0.1)
        folders = {c.key: (self.folder(c.name), _elsewhere(c)) for c in cs}
        latency = self.latency_split()
        timed = time_variants(folders, latency, settings, Progress(None, 0, settings.rounds))
        base = BASELINE.key
        out = {}
        for key in folders:
            row = timing_figures(timed.batched[key], timed.b1[key], "time", timed.groups, len(latency))
            row.update(speedups(batch_rounds(timed.batched[base], "time"), batch_rounds(timed.batched[key], "time"),
                                timed.b1[base], timed.b1[key], timed.groups))
            out[key] = {"batch_ms": row["batch_ms"], "b1_ms": row["b1_ms_median"], "rounds": row["rounds"],
                        **{k: row[k] for k in ("batch_speedup", "batch_speedup_lo", "batch_speedup_hi", "b1_speedup",
                                               "b1_speedup_lo", "b1_speedup_hi")}}
        return out

    def ranking(self, parent: Candidate) -> list[str]:
        """The parent's weight layers, the one whose int8 alone agrees least with float first (ONNX Runtime's
        quantizer, one layer at a time, on `scan_images` validation images)."""
        from onnxruntime.quantization.shape_inference import quant_pre_process

        recipe = OnnxInt8(sensitivity_images=self.space.scan_images, calib_size=200)
        model = self.load(parent).model
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            export.to_onnx(model, work / "fp32.onnx", recipe.opset)
            with contextlib.redirect_stdout(io.StringIO()):
                quant_pre_process(str(work / "fp32.onnx"), str(work / "prepared.onnx"))
            calib = self.ctx.calibration_subset(recipe.calib_size, recipe.calib_seed, "the layer scan")
            rows = layer_sensitivity(work / "prepared.onnx", work, recipe, calib, self.data.val,
                                     weight_nodes(work / "prepared.onnx"), EVAL_BATCH)
        return [r["node"] for r in rows]

    def test_errors(self, cs: list[Candidate]) -> dict:
        """Test top-1 error of each of `cs`: the search's one read of the test split, after its choice."""
        test = self.data.test
        return {c.key: evaluate(self.load(c).predict, batches(test, EVAL_BATCH)).top1_err for c in cs}

    # ------------------------------------------------------------ estimates
    @cached_property
    def image_seconds(self) -> float:
        """Seconds per image of the baseline's forward pass (a batch of validation images, after one untimed)."""
        model = torch_predict(source_from_checkpoint(self.run.baseline_file()).model)
        x = next(iter(batches(self.latency_split(), EVAL_BATCH)))[0]
        model(x)
        start = time.perf_counter()
        model(x)
        return (time.perf_counter() - start) / len(x)

    def evaluation_cost(self) -> float:
        return self.image_seconds * len(self.data.val)

    def scan_cost(self, parent: Candidate) -> float:
        """A layer scan: every weight layer quantized alone on 200 images and scored on `scan_images`."""
        _, _, spec = read_meta(self.folder(parent.name))
        layers = len(spec.channels) + 3
        return layers * (self.image_seconds * (1 - 0.8 * parent.pruned) * (200 + self.space.scan_images) + 2)

    def cost(self, c: Candidate) -> float:
        """Seconds to build the last step of `c` (its parents are built by the steps before) and take its proxies,
        estimated from the baseline's forward time: a fine-tune's epochs at about 3x forward (and the teacher's 1x)
        with the whole validation split after each, a calibration, the subset."""
        t, scale = self.image_seconds, 1.0 - 0.8 * c.pruned  # MACs fall a little slower than parameters
        seconds = t * scale * (self.space.proxy_images or len(self.data.val)) + self.space.proxy_seconds + 2
        name, recipe = c.steps[-1]
        if (self.folder(name) / META_FILE).exists():
            return seconds
        epochs = getattr(recipe, "finetune_epochs", 0)
        teacher = 1 if getattr(recipe, "distill", False) else 0
        seconds += epochs * t * (len(self.data.train) * (3 * scale + teacher) + len(self.data.val) * scale)
        if isinstance(recipe, StructuredPrune):
            seconds += t * scale * len(self.data.val)  # the parent's own evaluation on the whole split
        if recipe.output.value != "float":
            seconds += t * scale * 2 * getattr(recipe, "calib_size", 0) + 5
            if getattr(recipe, "max_drop", 0):  # NNCF's accuracy control scores the split again per layer it tries
                seconds += 10 * t * scale * len(self.data.val)
        return seconds

    def note(self, c: Candidate, record: dict) -> None:
        """A step's figures into its variant's meta.json, under figures["search"][key]."""
        folder = self.folder(c.name)
        if not (folder / META_FILE).exists():
            return
        meta = read_json(folder / META_FILE, "variant metadata")
        keep = ("val_err_proxy", "val_err", "b1_ms", "batch_ms", "macs", "params")
        found = {k: record[k] for k in keep if k in record}
        if found:
            meta.setdefault("figures", {}).setdefault("search", {}).setdefault(c.key, {}).update(
                found, proxy_images=self.space.proxy_images)
            write_json(folder / META_FILE, meta)


def _elsewhere(c: Candidate) -> str | None:
    """The runtime to load `c` in: None where it is the variant's own."""
    return None if c.runtime == rt.OWN.get(c.output, "torch") else c.runtime
