"""trainer.precision: auto picks bf16 mixed precision only where the device computes bf16 natively."""

import pytest
import torch

from attnscope.engine.config import load_config
from attnscope.training import precision
from attnscope.training.precision import resolve_precision


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected",
    [
        (True, False, "bf16-mixed"),
        (False, True, "bf16-mixed"),
        (False, False, "32-true"),
    ],
)
def test_auto_follows_the_cpu(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert resolve_precision("auto", "cpu") == expected


def test_auto_on_cuda_asks_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # the CPU's answer must not count
    assert resolve_precision("auto", "gpu") == "32-true"
    assert precision.native_bf16("auto") is False


def test_a_named_precision_passes_unchanged_and_the_shipped_recipe_uses_auto():
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed" and resolve_precision("32-true", "gpu") == "32-true"
    assert load_config("fashion_mnist").trainer.precision == "auto"
