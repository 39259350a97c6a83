from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, size=(40, 30), mode="RGB", seed=0, **save_options) -> Path:
    """A random image file of the given size and mode."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4}[mode]
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode)
    image.save(path, **save_options)
    return path


@pytest.fixture
def lesion_folder(tmp_path: Path) -> Path:
    """The Kaggle/ISIC layout: marking.csv (image_id,target,patient_id) and train/<id>.jpg."""
    rows = ["image_id,target,patient_id"]
    for i in range(12):
        write_image(tmp_path / "train" / f"ISIC_{i:04d}.jpg", seed=i)
        rows.append(f"ISIC_{i:04d},{int(i % 3 == 0)},P{i // 2}")
    (tmp_path / "marking.csv").write_text("\n".join(rows) + "\n")
    return tmp_path
