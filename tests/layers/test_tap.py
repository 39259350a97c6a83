import logging

import pytest
import torch
from torch import nn

from attnscope import capture_attention
from attnscope.layers import AttentionTap, create_attn, find_taps


class EveryLayerNet(nn.Module):
    """A small network with one of every attention layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.se = create_attn("se", 16)
        self.cbam = create_attn("cbam", 16)
        self.local = create_attn("local", 16, kernel_size=3, heads=2, stride=2)
        self.global_block = create_attn("global", 16, heads=4)
        self.pool3 = create_attn("grid", 16, global_channels=16, attn_channels=8)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        early = self.cbam(self.se(self.stem(x)))
        late = self.global_block(self.local(early))
        return self.head(self.pool3(early, late))


def hook_count(model: nn.Module) -> int:
    return sum(len(tap._forward_hooks) for tap in find_taps(model).values())


def test_captures_every_map_by_its_module_name():
    model = EveryLayerNet()
    with capture_attention(model) as maps:
        logits = model(torch.randn(2, 3, 8, 8))
    assert logits.shape == (2, 3)
    assert {name: tuple(m.shape) for name, m in maps.items()} == {
        "se": (2, 16),
        "cbam.channel_gate": (2, 16),
        "cbam.spatial_gate": (2, 1, 8, 8),
        "local": (2, 2, 8, 8),
        "global_block": (2, 4, 4, 4),
        "pool3": (2, 1, 8, 8),
    }


def test_no_hook_and_no_observer_remains_after_the_block():
    model = EveryLayerNet()
    with capture_attention(model):
        assert hook_count(model) == 6
        assert all(tap.observed for tap in find_taps(model).values())
    assert hook_count(model) == 0
    assert not any(tap.observed for tap in find_taps(model).values())


def test_hooks_are_removed_when_the_forward_raises():
    model = EveryLayerNet()
    with pytest.raises(RuntimeError):
        with capture_attention(model):
            model(torch.randn(2, 5, 8, 8))  # wrong channel count
    assert hook_count(model) == 0
    assert not any(tap.observed for tap in find_taps(model).values())


def test_a_later_forward_replaces_the_maps_and_nothing_is_stored_outside():
    model = EveryLayerNet()
    first, second = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    with capture_attention(model, detach=True) as maps:
        model(first)
        model(second)
    with capture_attention(model, detach=True) as only_second:
        model(second)
    for name in maps:
        torch.testing.assert_close(maps[name], only_second[name])
    kept = {name: m.clone() for name, m in maps.items()}
    model(first)
    assert all(torch.equal(maps[name], kept[name]) for name in maps)


def test_maps_keep_their_graph_unless_detached():
    model = EveryLayerNet()
    with capture_attention(model) as maps:
        model(torch.randn(1, 3, 8, 8))
    maps["pool3"].sum().backward()  # attention supervision needs this
    assert model.pool3.phi.weight.grad is not None
    with capture_attention(model, detach=True) as maps:
        model(torch.randn(1, 3, 8, 8))
    assert not any(m.requires_grad for m in maps.values())


def test_nested_captures_both_fill_and_unwind():
    model = EveryLayerNet()
    with capture_attention(model) as outer:
        with capture_attention(model) as inner:
            model(torch.randn(1, 3, 8, 8))
            assert model.se.tap.observers == 2
        assert set(inner) == set(outer)
        assert model.se.tap.observed
    assert model.se.tap.observers == 0


def test_a_model_without_taps_warns(caplog):
    with caplog.at_level(logging.WARNING), capture_attention(nn.Conv2d(1, 1, 1)) as maps:
        pass
    assert maps == {}
    assert "no attention taps" in caplog.text


def test_a_tap_is_an_identity():
    tensor = torch.randn(3, 4)
    assert AttentionTap()(tensor) is tensor
