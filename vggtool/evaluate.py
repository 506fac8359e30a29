"""The one evaluation of the project: top-k error of any predict function.

A predict function maps a normalised float batch [B, 3, 32, 32] to logits
(a tensor or a numpy array). Eager, quantized and ONNX Runtime models all
come through here via small adapters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

Predict = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


@dataclass(frozen=True)
class EvalResult:
    top1_err: float
    top5_err: float
    images: int
    predict_seconds: float

    @property
    def ms_per_image(self) -> float:
        return 1000 * self.predict_seconds / self.images if self.images else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "ms_per_image": self.ms_per_image}


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[int]:
    """How many rows have their target among the k largest logits, for each k."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hits = top.eq(targets.view(-1, 1))
    return [int(hits[:, : min(k, k_max)].any(dim=1).sum()) for k in ks]


def evaluate(
    predict: Predict,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    on_batch: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> EvalResult:
    """Top-1/top-5 error over all batches; also the time spent inside `predict` (the report's runtime)."""
    n = c1 = c5 = 0
    seconds = 0.0
    for x, y in batches:
        start = clock()
        out = predict(x)
        seconds += clock() - start
        logits = torch.as_tensor(out).float().cpu()
        a, b = topk_correct(logits, y.cpu())
        c1, c5, n = c1 + a, c5 + b, n + len(y)
        if on_batch:
            on_batch(len(y))
    if n == 0:
        return EvalResult(float("nan"), float("nan"), 0, 0.0)
    return EvalResult(1 - c1 / n, 1 - c5 / n, n, seconds)


def torch_predict(model: nn.Module, device: torch.device | str = "cpu") -> Predict:
    """Adapter for any torch module, float or quantized: eval mode, no autograd."""
    model.eval()

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x.to(device))

    return predict


def compare(reference: Predict, candidate: Predict, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """How closely `candidate` reproduces `reference`: max |logit difference| and top-1 agreement."""
    n = agree = 0
    max_diff = 0.0
    for x, _ in batches:
        a = torch.as_tensor(reference(x)).float().cpu()
        b = torch.as_tensor(candidate(x)).float().cpu()
        max_diff = max(max_diff, float((a - b).abs().max()))
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        n += len(x)
    return {"max_abs_logit_diff": max_diff, "top1_agreement": agree / n if n else float("nan"), "images": n}
