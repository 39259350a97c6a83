import numpy as np
import pytest
import torch

from attnscope import ConfigError
from attnscope.data.augment import AugmentConfig, BatchTransform, dataset_mean_std


def square_batch(batch=8, size=32):
    """Images whose bright square is their mask: any geometric transform must move both alike."""
    masks = torch.zeros(batch, 1, size, size, dtype=torch.uint8)
    for i in range(batch):
        top, left = 3 + i, 5 + 2 * i % 10
        masks[i, :, top : top + 10, left : left + 14] = 1
    images = (masks.repeat(1, 3, 1, 1) * 255).to(torch.uint8)
    return images, masks


@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(rotation=30, p=1.0),
        AugmentConfig(rot90=True, rotation=0),
        AugmentConfig(crop_scale=(0.5, 0.8), rotation=0, hflip=False, vflip=False),
    ],
)
def test_masks_follow_the_geometric_transforms(config):
    torch.manual_seed(0)
    images, masks = square_batch()
    transform = BatchTransform(config, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 32, 3, with_masks=True)
    out, out_masks = transform(images, masks, train=True)
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}  # still a mask: nearest, not blurred
    bright = out[:, :1] > 0.5
    agreement = (bright == out_masks.bool()).float().mean().item()
    assert agreement > 0.97
    assert not torch.equal(out_masks, masks.float())  # something did move


def test_evaluation_is_deterministic_and_only_normalises():
    images, masks = square_batch()
    transform = BatchTransform(
        AugmentConfig(rotation=45, color_jitter=0.4, rot90=True),
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        32,
        3,
        with_masks=True,
    )
    first, first_masks = transform(images, masks, train=False)
    second, _ = transform(images, masks, train=False)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, (images.float() / 255 - 0.5) / 0.25)
    assert torch.equal(first_masks, masks.float())


def test_training_randomness_follows_the_torch_seed():
    images, _ = square_batch()
    transform = BatchTransform(AugmentConfig(rotation=20, p=1.0), (0.0,) * 3, (1.0,) * 3, 32, 3)
    torch.manual_seed(5)
    first, _ = transform(images, train=True)
    torch.manual_seed(5)
    second, _ = transform(images, train=True)
    assert torch.equal(first, second)


def test_grayscale_colour_jitter_touches_brightness_and_contrast_only():
    transform = BatchTransform(
        AugmentConfig(color_jitter=0.3, rotation=0, hflip=False, vflip=False, p=1.0), (0.0,), (1.0,), 16, 1
    )
    images = torch.full((4, 1, 16, 16), 100, dtype=torch.uint8)
    out, _ = transform(images, train=True)
    assert out.shape == (4, 1, 16, 16) and not torch.allclose(out, images.float() / 255)


def test_flips_and_quarter_turns_are_exact():
    torch.manual_seed(0)
    images = torch.arange(2 * 16, dtype=torch.uint8).view(2, 1, 4, 4).repeat(4, 1, 1, 1)
    transform = BatchTransform(AugmentConfig(rotation=0, rot90=True, p=1.0), (0.0,), (1.0 / 255,), 4, 1)
    out, _ = transform(images, train=True)
    variants = {tuple(torch.rot90(img, k, (-2, -1)).flatten().tolist()) for img in images[:2].float() for k in range(4)}
    assert {tuple(o.flatten().tolist()) for o in out} <= variants  # each output a turn of an input, no blur


def test_bad_augment_options_are_named():
    with pytest.raises(ConfigError, match=r"crop_scale=\(0.9, 0.5\)"):
        BatchTransform(AugmentConfig(crop_scale=(0.9, 0.5)), (0.5,) * 3, (0.5,) * 3, 16, 3)
    with pytest.raises(ConfigError, match="mean/std have 3/3 values for 1 channel"):
        BatchTransform(AugmentConfig(), (0.5,) * 3, (0.5,) * 3, 16, 1)


def test_rotation_p_rotates_every_image_while_flips_keep_their_chance():
    """torchvision's RandomRotation (the AttnVGG melanoma tutorial's) rotates every image; flips stay at p."""
    from attnscope.data.augment import sample_geometry

    torch.manual_seed(0)
    geometry = sample_geometry(4000, AugmentConfig(rotation=10, rotation_p=1.0, vflip=False), torch.device("cpu"))
    assert bool((geometry["angle"] != 0).all()) and float(geometry["angle"].abs().max()) <= 10
    assert 0.45 < float(geometry["hflip"].float().mean()) < 0.55 and not bool(geometry["vflip"].any())
    torch.manual_seed(0)
    default = sample_geometry(4000, AugmentConfig(rotation=10), torch.device("cpu"))
    torch.manual_seed(0)
    same = sample_geometry(4000, AugmentConfig(rotation=10, rotation_p=0.5), torch.device("cpu"))
    assert 0.45 < float((default["angle"] != 0).float().mean()) < 0.55
    assert all(torch.equal(default[k], same[k]) for k in default)  # null means p: the same draws
    with pytest.raises(ConfigError, match=r"data.augment.rotation_p=2 must be null \(the same as p\)"):
        BatchTransform(AugmentConfig(rotation_p=2), (0.5,) * 3, (0.5,) * 3, 16, 3)


def test_dataset_statistics_match_numpy_on_a_subset():
    images = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    index = np.array([3, 1, 40, 7, 7])
    mean, std = dataset_mean_std(images, index, chunk=2)
    chosen = images[index].astype(np.float64) / 255
    np.testing.assert_allclose(mean, chosen.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(std, chosen.std(axis=(0, 1, 2)))


def test_the_broadcast_grid_equals_affine_grid():
    from torch.nn import functional as F

    from attnscope.data.augment import sampling_grid

    theta = torch.randn(5, 2, 3)
    torch.testing.assert_close(sampling_grid(theta, 7, 9), F.affine_grid(theta, [5, 1, 7, 9], align_corners=False))


def test_maps_move_with_the_images_at_their_own_size():
    """A map that is a block average of the image, moved, equals the block average of the moved image."""
    from attnscope.data.augment import apply_geometry, sample_geometry, warp_maps

    torch.manual_seed(1)
    images = torch.rand(8, 1, 32, 32)
    geometry = sample_geometry(8, AugmentConfig(rotation=0, rot90=True, hflip=True, vflip=True, p=0.5), images.device)
    moved, _ = apply_geometry(images, None, geometry)
    maps = torch.nn.functional.avg_pool2d(images, 8)
    warped, inside = warp_maps(maps, geometry)
    torch.testing.assert_close(warped, torch.nn.functional.avg_pool2d(moved, 8))
    assert torch.equal(inside, torch.ones_like(inside))  # flips and turns bring nothing in from outside


def test_a_rotated_map_knows_which_cells_came_from_outside():
    from attnscope.data.augment import warp_maps

    geometry = {
        "angle": torch.tensor([30.0]),
        "hflip": torch.tensor([False]),
        "vflip": torch.tensor([False]),
        "turns": torch.tensor([0]),
        "scale": torch.ones(1, 2),
        "offset": torch.zeros(1, 2),
    }
    maps = torch.ones(1, 1, 8, 8, requires_grad=True)
    warped, inside = warp_maps(maps, geometry)
    assert inside[0, 0, 3:5, 3:5].min() == 1 and inside[0, 0, 0, 0] < 0.5  # the centre stays, a corner leaves
    torch.testing.assert_close(warped, inside)  # a map of ones moves to exactly the inside weights
    warped.sum().backward()
    assert maps.grad is not None and maps.grad.abs().sum() > 0  # the move is differentiable


def reference_augmentation(images, geometry, scale, shift):
    """The pipeline written the slow way, one image at a time: convert, move, then normalise."""
    from torch.nn import functional as F

    from attnscope.data.augment import sampling_matrices

    theta = sampling_matrices(geometry).float()
    expected = []
    for i, image in enumerate(images.float()):
        warp = geometry["angle"][i] != 0 or (geometry["scale"][i] != 1).any() or (geometry["offset"][i] != 0).any()
        if warp:
            grid = F.affine_grid(theta[i : i + 1], [1, *image.shape], align_corners=False)
            moved = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        else:
            moved = image
            if geometry["hflip"][i]:
                moved = moved.flip(-1)
            if geometry["vflip"][i]:
                moved = moved.flip(-2)
            moved = torch.rot90(moved, -int(geometry["turns"][i]), dims=(-2, -1))
        expected.append(moved * scale[0] + shift[0])
    return torch.stack(expected)


def test_the_fused_pipeline_equals_converting_moving_and_normalising_one_image_at_a_time():
    from attnscope.data.augment import sample_geometry

    config = AugmentConfig(rotation=15, rot90=True, p=0.5)
    transform = BatchTransform(config, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 24, 3)
    images = torch.randint(0, 256, (16, 3, 24, 24), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    torch.manual_seed(3)
    geometry = sample_geometry(16, config, images.device)
    torch.manual_seed(3)
    out, _ = transform(images, train=True)
    expected = reference_augmentation(images, geometry, transform.scale, transform.shift)
    warped = (geometry["angle"] != 0) | (geometry["scale"] != 1).any(dim=1) | (geometry["offset"] != 0).any(dim=1)
    assert 0 < warped.sum() < 16  # both paths are exercised
    assert torch.equal(out[~warped], expected[~warped])  # flips and turns: exact
    # warps: the same bilinear sampling; the broadcast grid differs from affine_grid by float rounding
    torch.testing.assert_close(out[warped], expected[warped], atol=1e-4, rtol=1e-5)
