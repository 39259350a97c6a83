import math

import pytest
import torch
from torch import nn

from attnscope.errors import ConfigError
from attnscope.explain.scores import (
    area_under,
    blurred,
    box_masks,
    deletion_insertion,
    energy_pointing_game,
    jaccard,
    pointing_game,
    target_probability,
)


def square(size=8, start=2, stop=5):
    mask = torch.zeros(1, size, size)
    mask[:, start:stop, start:stop] = 1
    return mask


def test_box_masks_cover_exactly_the_box():
    masks = box_masks(torch.tensor([[1, 2, 4, 3], [0, 0, 8, 8]]), (6, 8))
    assert masks[0].sum() == 3 and masks[0, 2, 1:4].tolist() == [1, 1, 1] and masks[1].sum() == 48


def test_pointing_game_hits_and_misses():
    inside, outside = torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)
    inside[0, 3, 3], outside[0, 7, 0] = 1.0, 1.0
    maps = torch.cat([inside, outside])
    masks = square().repeat(2, 1, 1)
    assert pointing_game(maps, masks).tolist() == [1.0, 0.0]
    assert math.isnan(pointing_game(inside, torch.zeros(1, 8, 8)).item())  # no target, no score


def test_energy_is_the_share_of_mass_inside():
    attention = torch.zeros(1, 8, 8)
    attention[0, 3, 3], attention[0, 0, 0] = 3.0, 1.0
    assert energy_pointing_game(attention, square()).item() == pytest.approx(0.75)
    assert energy_pointing_game(torch.full((1, 8, 8), 0.5), square()).item() == pytest.approx(9 / 64)


def test_jaccard_of_the_thresholded_map():
    attention = torch.zeros(1, 8, 8)
    attention[0, 2:5, 2:4] = 0.9  # 6 pixels, all inside the 9-pixel mask
    attention[0, 7, 7] = 0.6  # one outside
    assert jaccard(attention, square()).item() == pytest.approx(6 / 10)
    assert jaccard(attention, square(), threshold=0.95).item() == 0.0
    with pytest.raises(ConfigError, match="must both be"):
        jaccard(attention, torch.zeros(1, 4, 4))


def test_target_probability_for_one_logit_and_for_softmax():
    one = torch.tensor([[2.0], [2.0]])
    assert target_probability(one, torch.tensor([1, 0])).tolist() == pytest.approx(
        [torch.sigmoid(torch.tensor(2.0)).item(), torch.sigmoid(torch.tensor(-2.0)).item()]
    )
    many = torch.tensor([[1.0, 2.0, 3.0]])
    assert target_probability(many, torch.tensor([2])).item() == pytest.approx(torch.softmax(many, 1)[0, 2].item())


def test_area_under_a_curve():
    assert area_under(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])).tolist() == pytest.approx([1.0, 0.25])


def test_blur_keeps_a_constant_image_and_smooths_an_edge():
    constant = torch.full((1, 3, 16, 16), 0.7)
    torch.testing.assert_close(blurred(constant), constant)
    edge = torch.zeros(1, 1, 16, 16)
    edge[..., 8:] = 1
    smooth = blurred(edge)
    assert 0.2 < smooth[0, 0, 0, 7] < 0.5 and 0.5 < smooth[0, 0, 0, 8] < 0.8


class Counter(nn.Module):
    """Logit of class 1 = sum of the image's first channel inside a 4x4 corner square: only
    those 16 pixels matter."""

    def forward(self, x):
        score = x[:, 0, :4, :4].sum((1, 2))
        return torch.stack([torch.zeros_like(score), score], 1)


def test_a_faithful_map_deletes_and_inserts_faster_than_an_unfaithful_one():
    images = torch.zeros(1, 1, 16, 16)
    images[..., :4, :4] = 1.0  # the evidence for class 1
    good = torch.zeros(1, 16, 16)
    good[:, :4, :4] = 1.0
    bad = 1 - good
    target = torch.tensor([1])
    faithful = deletion_insertion(Counter(), images, good, target, steps=16)
    unfaithful = deletion_insertion(Counter(), images, bad, target, steps=16)
    assert faithful["deletion_auc"] < unfaithful["deletion_auc"] - 0.3
    assert faithful["insertion_auc"] > unfaithful["insertion_auc"]
    # exactly: deleting the top 16 of 256 pixels (the first step) removes all the evidence
    assert faithful["deletion_curve"][0, 1].item() == pytest.approx(0.5)
    assert faithful["deletion_curve"][0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(16.0)).item())
    assert unfaithful["deletion_curve"][0, :-1].min() > 0.99  # the evidence goes only at the very end


def test_deletion_refuses_maps_of_the_wrong_size():
    with pytest.raises(ConfigError, match="maps"):
        deletion_insertion(Counter(), torch.zeros(1, 1, 8, 8), torch.zeros(1, 4, 4), torch.tensor([1]))
