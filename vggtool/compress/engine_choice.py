"""`--engine auto`: which torch.ao engine runs a static int8 model faster on this CPU, measured on the
model itself at batch 1 and at a deployment batch, since the answer turns with both (fbgemm led at
batch 1 and oneDNN's `x86` at batch 16 on the AMX and the VNNI machines measured so far).

fbgemm and x86 share one qconfig (HistogramObserver, reduce_range) on both stacks, and torch packs a
quantized state_dict for the engine in use when it is loaded: so one calibration serves both, and the
choice is only which engine packs the weights. Timings are short, interleaved rounds of both engines
(the bench's own timing primitives), recorded with the CPU in the variant's meta.json.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import nn

from vggtool import quant_ao
from vggtool.cpu import cpu_info
from vggtool.data import Split
from vggtool.errors import VggtoolError

CANDIDATES = ("fbgemm", "x86")  # the first is kept unless another is faster by more than MARGIN
MARGIN = 0.03  # a near tie (x86 packs for fbgemm on CPUs without VNNI) keeps fbgemm, the report's engine
ROUNDS = 3
SECONDS = 0.25  # per engine, batch size and round: the median call of each (oneDNN's first calls build its kernels)
WARMUP = 10  # untimed calls at most before each, fewer once the time settles
IMAGES = 64


def choose(state: dict, skeleton: Callable[[str], nn.Module], images: Split, batch: int) -> tuple[dict, nn.Module]:
    """Time `state` packed for each engine this build has, at batch 1 and at `batch`. Returns the figures, with
    the engine faster at `batch` (`chosen`) and the faster one at each batch size (`by_batch`), and the model
    packed for the chosen engine, that engine in use."""
    from vggtool.bench.timing import batch1_times, batch_timing, timing_inputs
    from vggtool.evaluate import torch_predict

    engines = [e for e in CANDIDATES if e in quant_ao.available_engines()]
    if not engines:
        raise VggtoolError(f"--engine auto compares {' and '.join(CANDIDATES)}, and this torch build has neither: "
                           f"choose one of {', '.join(quant_ao.available_engines())}")
    latency = images.subset(torch.arange(min(len(images), max(IMAGES, batch))))
    timed, singles = timing_inputs(latency, batch, "time")
    models = {e: quant_ao.repacked(state, skeleton, e) for e in engines}
    ms: dict[str, dict[str, list[float]]] = {str(b): {e: [] for e in engines} for b in (1, batch)}
    for _ in range(ROUNDS):
        for e, model in models.items():
            quant_ao.use_engine(e)
            predict = torch_predict(model)
            if batch > 1:
                ms[str(batch)][e].append(statistics.median(batch_timing(predict, timed, WARMUP, SECONDS).call_ms_per_image))
            ms["1"][e].append(statistics.median(batch1_times(predict, singles, WARMUP, 5, SECONDS)))
    medians = {b: {e: statistics.median(v) for e, v in per.items()} for b, per in ms.items()}
    by_batch = {b: _faster(per) for b, per in medians.items()}
    chosen = by_batch[str(batch)]
    quant_ao.use_engine(chosen)
    return {"chosen": chosen, "for_batch": batch, "by_batch": by_batch, "ms_per_image": medians, "margin": MARGIN,
            "rounds": ROUNDS, "threads": torch.get_num_threads(), **cpu_info()}, models[chosen]


def _faster(ms: dict[str, float]) -> str:
    """The first engine, unless another is faster by more than MARGIN."""
    first, best = next(iter(ms)), min(ms, key=ms.get)
    return best if ms[best] < (1 - MARGIN) * ms[first] else first
