"""A CheXpert-style CSV (one column per finding, 1 / 0 / -1 / blank) from the command line: trained and evaluated
with its uncertain labels left out of the loss and of each finding's metrics."""

import json

import numpy as np
import pytest
from PIL import Image

from attnscope import cli
from tests.data.test_chest_layouts import chexpert_csv

pytestmark = pytest.mark.e2e


def test_a_chexpert_csv_trains_and_evaluates_with_uncertain_labels_left_out(tmp_path, capsys):
    rng = np.random.default_rng(0)
    cells = []
    for number in range(80):
        cardiomegaly, edema = number % 2, (number // 2) % 2
        cells.append(
            {
                "Cardiomegaly": "-1.0" if number % 3 == 0 else f"{cardiomegaly}.0",
                "Edema": "" if number % 5 == 0 else f"{edema}.0",
            }
        )
    csv_path = chexpert_csv(tmp_path, cells)
    for number in range(len(cells)):  # the findings drawn into the images: a bright heart, a grey haze
        path = tmp_path / "CheXpert-v1.0-small" / "train" / f"patient{number // 2:05d}" / f"study{number % 2 + 1}"
        pixels = rng.normal(90, 10, (32, 32))
        pixels[10:22, 10:22] += 120 * (number % 2)
        pixels += 60 * ((number // 2) % 2)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert("RGB").save(path / "view1_frontal.jpg")
    argv = ["train", "--model", "attn_vgg_tiny", "--data", "csv", "--data-option", f"csv_path={csv_path}"]
    argv += ["--data-option", f"image_root={tmp_path}", "--data-option", "layout=chexpert"]
    argv += ["--data-option", "label_column=[Cardiomegaly, Edema]", "--image-size", "32", "--batch-size", "16"]
    argv += ["--epochs", "3", "--lr", "0.003", "--cache-dir", str(tmp_path / "cache")]
    argv += ["--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert cli.main(argv) == 0
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["classes"] == ["Cardiomegaly", "Edema"] and data["multilabel"] and data["rows"] == 80
    assert cli.main(["evaluate", str(tmp_path / "run"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "run" / "evaluation" / "metrics.json").read_text())["metrics"]
    test_rows = metrics["rows"]
    known = metrics["rows_per_class"]
    assert known[0] < test_rows == known[1]  # uncertain Cardiomegaly labels left out; blank Edema ones are negatives
    assert all(np.isfinite(metrics["auc_per_class"]))
    capsys.readouterr()
    assert cli.main(["explain", str(tmp_path / "run"), "--target", "all", "--count", "2", "--no-progress"]) == 0
    overlays = sorted(path.stem.rsplit("-", 1)[1] for path in (tmp_path / "run" / "explain" / "overlays").glob("*.png"))
    assert overlays == ["Cardiomegaly", "Cardiomegaly", "Edema", "Edema"]  # a map per finding
