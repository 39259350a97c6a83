import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from attnscope.explain.overlay import overlay, spatial_maps, upsample, write_attention_grid
from attnscope.layers.tap import native_maps
from attnscope.models import create_model


def test_overlay_blends_the_colour_map_over_the_image():
    image = np.full((4, 4, 3), 0.5)
    heat = np.linspace(0, 1, 16).reshape(4, 4)
    blended = overlay(image, heat, alpha=0.4, cmap="jet")
    expected = 0.6 * image + 0.4 * colormaps["jet"](heat)[..., :3]
    np.testing.assert_allclose(blended, expected)
    gray = overlay(np.full((4, 4), 0.2), heat, alpha=0.0, cmap="viridis")  # any colour map; gray becomes RGB
    assert gray.shape == (4, 4, 3) and np.allclose(gray, 0.2)


def test_maps_average_heads_keep_their_grid_and_upsample_bilinearly():
    maps = {"gate": torch.rand(2, 4, 3, 3), "se": torch.rand(2, 16)}
    native = native_maps(maps)
    assert set(native) == {"gate"}  # channel gates have no place in an image
    torch.testing.assert_close(native["gate"], maps["gate"].mean(1))
    up = upsample(native, (12, 12))["gate"]
    expected = torch.nn.functional.interpolate(
        native["gate"][:, None], size=(12, 12), mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(up, expected)
    torch.testing.assert_close(spatial_maps(maps, (12, 12))["gate"], up)


def test_grid_has_a_column_per_map_and_a_row_per_image(tmp_path):
    images = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    maps = {"a": torch.rand(3, 32, 32), "b": torch.rand(3, 32, 32)}
    path = write_attention_grid(images, maps, ["x", "y", "z"], tmp_path / "grid.png", alpha=0.6, cmap="magma")
    with Image.open(path) as picture:
        width, height = picture.size
    assert width > 2.5 * height / 3  # three columns per row


def test_attention_grid_of_a_real_model(tmp_path):
    from attnscope.explain.overlay import attention_maps

    model = create_model("attn_vgg_tiny", num_classes=1).eval()
    maps = attention_maps(model, torch.randn(2, 3, 64, 64))
    assert set(maps) == {"pool3", "pool4"} and maps["pool3"].shape == (2, 64, 64)
    assert maps["pool3"].min() >= 0
