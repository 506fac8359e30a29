import numpy as np
import pytest
import torch

from vggtool.evaluate import compare, evaluate, topk_correct


def test_topk_against_a_hand_computed_case():
    logits = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],   # target 0: top-1 hit
        [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0],   # target 5: rank 5 -> top-5 hit only
        [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0],   # target 6: rank 7 -> miss
        [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],   # target 2: top-1 hit
    ])
    targets = torch.tensor([0, 5, 6, 2])
    assert topk_correct(logits, targets) == [2, 3]
    batches = [(torch.zeros(2, 1), targets[:2]), (torch.zeros(2, 1), targets[2:])]
    logits_iter = iter([logits[:2], logits[2:].numpy()])  # tensors and numpy arrays both work
    result = evaluate(lambda x: next(logits_iter), batches)
    assert result.images == 4
    assert result.top1_err == pytest.approx(0.5)
    assert result.top5_err == pytest.approx(0.25)


def test_predict_time_is_summed_inside_the_call():
    ticks = iter([0.0, 1.0, 10.0, 12.0])
    batches = [(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))] * 2
    result = evaluate(lambda x: torch.ones(3, 5), batches, clock=lambda: next(ticks))
    assert result.predict_seconds == pytest.approx(3.0)
    assert result.ms_per_image == pytest.approx(500.0)


def test_compare_reports_difference_and_agreement():
    batches = [(torch.arange(6.0).view(2, 3), torch.zeros(2))]
    out = compare(lambda x: x, lambda x: np.asarray(x) + np.array([0, 0, 0.5]), batches)
    assert out["max_abs_logit_diff"] == pytest.approx(0.5)
    assert out["top1_agreement"] == 1.0
