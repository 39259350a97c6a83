"""ROAD's imputation against the linear system solved directly, and the ROAD and confidence-change scores."""

import pytest
import torch

from attnscope.errors import ConfigError
from attnscope.explain.road import confidence_change, linear_imputation, noisy_linear_imputation, road
from tests.explain.test_cam import Tiny

SIDE, CORNER = 1 / 6, 1 / 12


def imputed_by_dense_solve(image, removed):
    """Each removed pixel = weighted mean of its in-image neighbours: the system written out and solved."""
    height, width = removed.shape
    unknown = [(r, c) for r in range(height) for c in range(width) if removed[r, c]]
    index = {p: i for i, p in enumerate(unknown)}
    out = image.clone()
    for channel in range(image.shape[0]):
        matrix = torch.zeros(len(unknown), len(unknown), dtype=torch.float64)
        rhs = torch.zeros(len(unknown), dtype=torch.float64)
        for (r, c), i in index.items():
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if (dr, dc) == (0, 0) or not (0 <= rr < height and 0 <= cc < width):
                        continue
                    weight = SIDE if dr == 0 or dc == 0 else CORNER
                    matrix[i, i] += weight
                    if (rr, cc) in index:
                        matrix[i, index[(rr, cc)]] -= weight
                    else:
                        rhs[i] += weight * float(image[channel, rr, cc])
        solution = torch.linalg.solve(matrix, rhs)
        for (r, c), i in index.items():
            out[channel, r, c] = solution[i]
    return out


def test_linear_imputation_solves_the_neighbour_system():
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 9, 8, generator=generator)
    removed = torch.rand(2, 9, 8, generator=generator) < 0.6
    removed[:, 0, 0] = False  # every hole touches a kept pixel
    filled = linear_imputation(images, removed, tolerance=1e-7)
    default = linear_imputation(images, removed)  # stops earlier: within ROAD's noise of 0.01 by far
    for b in range(2):
        expected = imputed_by_dense_solve(images[b].double(), removed[b]).float()
        torch.testing.assert_close(filled[b], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(default[b], expected, atol=2e-3, rtol=0)
    assert torch.equal(filled[~removed[:, None].expand_as(images)], images[~removed[:, None].expand_as(images)])


def test_the_noise_falls_on_the_removed_pixels_only_and_is_seeded():
    images = torch.randn(1, 2, 6, 6)
    removed = torch.zeros(1, 6, 6, dtype=torch.bool)
    removed[0, 2:4, 2:4] = True
    noisy = noisy_linear_imputation(images, removed, 0.5, torch.Generator().manual_seed(0))
    again = noisy_linear_imputation(images, removed, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    clean = linear_imputation(images, removed)
    assert torch.equal(noisy[:, :, ~removed[0]], clean[:, :, ~removed[0]])
    assert not torch.equal(noisy[:, :, removed[0]], clean[:, :, removed[0]])


@torch.no_grad()
def test_road_removes_the_top_or_bottom_percentiles_of_each_map():
    model = Tiny().eval()
    images = torch.randn(2, 3, 10, 10)
    maps = torch.rand(2, 10, 10)
    targets = torch.tensor([0, 2])
    result = road(model, images, maps, targets, percentiles=(30, 70), noise=0.0)
    order = maps.flatten(1).argsort(1, descending=True)
    for column, percentile in enumerate((30, 70)):
        count = percentile
        top = torch.zeros(2, 100, dtype=torch.bool).scatter_(1, order[:, :count], True).view(2, 10, 10)
        bottom = torch.zeros(2, 100, dtype=torch.bool).scatter_(1, order[:, 100 - count :], True).view(2, 10, 10)
        for name, removed in (("road_morf_curve", top), ("road_lerf_curve", bottom)):
            probabilities = torch.softmax(model(linear_imputation(images, removed)), 1).gather(1, targets[:, None])
            torch.testing.assert_close(result[name][:, column], probabilities[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(result["road_morf"], result["road_morf_curve"].mean(1))
    with pytest.raises(ConfigError, match="strictly between 0 and 100"):
        road(model, images, maps, targets, percentiles=(0, 50))


@torch.no_grad()
def test_confidence_change_compares_the_image_with_the_image_times_its_map():
    model = Tiny().eval()
    images = torch.randn(3, 3, 8, 8)
    maps = torch.rand(3, 8, 8)
    targets = torch.tensor([1, 0, 2])
    result = confidence_change(model, images, maps, targets)
    before = torch.softmax(model(images), 1).gather(1, targets[:, None])[:, 0]
    after = torch.softmax(model(images * maps[:, None]), 1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(result["drop_in_confidence"], (before - after).clamp_min(0) / before)
    assert torch.equal(result["increase_in_confidence"], (after > before).float())
    ones = confidence_change(model, images, torch.ones(3, 8, 8), targets)
    assert torch.equal(ones["drop_in_confidence"], torch.zeros(3)) and ones["increase_in_confidence"].sum() == 0
