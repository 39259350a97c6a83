import numpy as np
import pytest

from attnscope import DataError
from attnscope.data.manifest import Manifest
from attnscope.data.sources import best_possible_auc, cluttered, synthetic_lesions


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC, written out so the test does not lean on the code under test."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return wins / (len(positives) * len(negatives))


def test_lesions_are_deterministic_per_item_whatever_the_count():
    small, large = synthetic_lesions(6, 48, seed=3), synthetic_lesions(9, 48, seed=3)
    np.testing.assert_array_equal(small.images, large.images[:6])
    np.testing.assert_array_equal(small.masks, large.masks[:6])
    assert not np.array_equal(synthetic_lesions(6, 48, seed=4).images, small.images)


def test_the_classes_overlap_by_design():
    lesions = synthetic_lesions(300, 48, seed=0)
    assert 0.4 < lesions.labels.mean() < 0.6
    ceiling = auc(lesions.severity, lesions.labels)
    assert ceiling == pytest.approx(best_possible_auc(), abs=0.03)
    assert 0.9 < best_possible_auc() < 0.97
    area = lesions.masks.reshape(len(lesions), -1).mean(axis=1)
    assert 0.65 < auc(area, lesions.labels) < ceiling  # size is a cue, not the answer


def test_masks_cover_the_lesion_and_the_lesion_is_darker_than_skin():
    lesions = synthetic_lesions(40, 64, seed=1)
    coverage = lesions.masks.reshape(40, -1).mean(axis=1)
    assert (coverage > 0.005).all() and (coverage < 0.6).all()
    gray = lesions.images.astype(float).mean(axis=-1)
    inside = (gray * lesions.masks).sum(axis=(1, 2)) / lesions.masks.sum(axis=(1, 2))
    outside = (gray * (1 - lesions.masks)).sum(axis=(1, 2)) / (1 - lesions.masks).sum(axis=(1, 2))
    assert (inside < outside).mean() > 0.95


def test_malignant_lesions_show_more_blue_grey():
    lesions = synthetic_lesions(200, 48, seed=2)
    image = lesions.images.astype(float)
    blueish = ((image[..., 2] > image[..., 0] + 5) & lesions.masks.astype(bool)).reshape(200, -1).mean(axis=1)
    assert blueish[lesions.labels == 1].mean() > 3 * blueish[lesions.labels == 0].mean()


def test_cluttered_places_each_item_whole_inside_its_box():
    rng = np.random.default_rng(0)
    items = rng.integers(1, 256, (5, 28, 28), dtype=np.uint8)
    source = Manifest("items", list("abcde"), np.arange(5) % 2, ["even", "odd"], images=items)
    canvases = cluttered(source, canvas=84, clutter=4, count=7, seed=0)
    assert canvases.images.shape == (7, 84, 84) and canvases.labels.tolist() == [0, 1, 0, 1, 0, 0, 1]
    for index in range(7):
        rows, cols = np.nonzero(canvases.masks[index])
        assert rows.max() - rows.min() == 27 and cols.max() - cols.min() == 27
        box = canvases.images[index, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box >= items[index % 5]).all()  # the item is there; clutter can only add on top
    assert (canvases.images * (1 - canvases.masks)).sum() > 0  # clutter outside the box
    np.testing.assert_array_equal(cluttered(source, count=7, seed=0).images, cluttered(source, count=7, seed=0).images)


def test_cluttered_needs_small_gray_items_in_memory():
    with pytest.raises(DataError, match="small gray images in memory"):
        cluttered(Manifest("files", ["a"], np.zeros(1, dtype=np.int64), ["x"], paths=["a.png"]))


def centre_prior_pointing(masks: np.ndarray) -> float:
    """The share of images whose mask holds the frame's central pixel: what a map of the centre scores."""
    side = masks.shape[-1]
    return float(masks[:, side // 2, side // 2].mean())


def test_lesions_anywhere_spread_over_the_frame_whole_and_defeat_a_centre_prior():
    centred = synthetic_lesions(150, 48, seed=4)
    anywhere = synthetic_lesions(150, 48, seed=4, placement="anywhere")
    rows = [np.nonzero(mask)[0].mean() / 48 for mask in anywhere.masks]
    centred_rows = [np.nonzero(mask)[0].mean() / 48 for mask in centred.masks]
    assert np.std(rows) > 0.12 > 0.08 > np.std(centred_rows)
    assert centre_prior_pointing(centred.masks) > 0.95 and centre_prior_pointing(anywhere.masks) < 0.4
    assert all(mask.any() for mask in anywhere.masks)  # every lesion is in its frame
    edges = np.concatenate(
        [anywhere.masks[:, 0], anywhere.masks[:, -1], anywhere.masks[:, :, 0], anywhere.masks[:, :, -1]]
    )
    touching = edges.reshape(4, 150, 48).any(axis=(0, 2))
    assert touching.mean() < 0.05  # and nearly always whole
    assert anywhere.labels.tolist() == centred.labels.tolist()  # the same classes, drawn before the image
    assert "placement=anywhere" in anywhere.source and "placement" not in centred.source


def test_distractors_darken_outside_the_lesion_and_an_unknown_placement_is_named():
    plain = synthetic_lesions(60, 64, seed=5)
    busy = synthetic_lesions(60, 64, seed=5, placement="anywhere")
    corner = (slice(0, 3), slice(0, 3))
    assert busy.images[:, corner[0], corner[1]].mean() < 0.6 * plain.images[:, corner[0], corner[1]].mean()
    dark_outside = ((busy.images.mean(-1) < 90) & (busy.masks == 0)).reshape(60, -1).mean(1)
    assert np.median(dark_outside) > 0.02  # rulers, corners and moles: dark things that are not the lesion
    with pytest.raises(DataError, match="placement='edge': use one of centre, anywhere"):
        synthetic_lesions(2, 32, placement="edge")
