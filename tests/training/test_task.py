"""The classification loss a run trains with: binary cross-entropy with label smoothing and positive weights, and
labels left out (uncertain, ignored) adding nothing, checked against torch's own formula."""

import math

import pytest
import torch
from torch.nn import functional as F

from attnscope.engine.config import load_config
from attnscope.training.task import build_loss


def test_cross_entropy_of_a_multilabel_run_is_torchs_binary_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 3), (torch.rand(6, 3) > 0.5).float()
    weights = torch.tensor([1.0, 2.0, 0.5])
    loss = build_loss(load_config(None, ["loss.name=ce", "loss.label_smoothing=0.1"]), "multilabel", weights)
    smoothed = target * 0.9 + 0.05
    expected = F.binary_cross_entropy_with_logits(logits, smoothed, pos_weight=weights)
    assert loss(logits, target) == pytest.approx(float(expected), rel=1e-6)


def test_labels_left_out_add_nothing_to_the_cross_entropy_or_its_mean():
    torch.manual_seed(1)
    logits, target = torch.randn(5, 2) * 3, (torch.rand(5, 2) > 0.5).float()
    target[1, 0] = target[3, 1] = math.nan
    loss = build_loss(load_config(None, ["loss.name=ce"]), "multilabel", None)
    known = ~torch.isnan(target)
    expected = F.binary_cross_entropy_with_logits(logits[known], target[known])
    value = loss(logits, target)
    assert torch.isfinite(value) and value == pytest.approx(float(expected), rel=1e-6)
    logits.requires_grad_(True)
    loss(logits, target).backward()
    assert logits.grad[1, 0] == 0 and logits.grad[3, 1] == 0 and logits.grad[0, 0] != 0
