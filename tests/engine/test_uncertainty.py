"""Per-image uncertainty in predict: the spread over the trained flips or over dropout samples, computed as the
test computes it by hand, and the refer column of the validation band."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from attnscope.engine.inference import PredictOptions, predict
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.uncertainty import predict_with_uncertainty
from attnscope.errors import ConfigError


def _images(folder, count=3):
    paths = []
    for number in range(count):
        path = folder / f"u{number}.png"
        Image.fromarray(np.random.default_rng(number).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_the_tta_spread_is_the_deviation_of_the_flipped_probabilities(trained_run):
    with Run.open(trained_run, progress=False) as run:
        loader = run.loader(DataSelection(split="test"))
        mean, spread, _ = predict_with_uncertainty(run, loader, "tta")
        batch = next(iter(loader))
        images, _ = run.transform(batch["image"])
        flips = {"none": (), "hflip": (3,), "vflip": (2,), "hvflip": (2, 3)}
        with torch.no_grad():  # the run trained with both flips: four views, calibrated as every consumer is
            drawn = torch.stack([torch.sigmoid(run.model()(images.flip(d) if d else images)[:, 0] / run.temperature)
                                 for d in flips.values()])  # fmt: skip
        count = len(batch["row"])
        torch.testing.assert_close(mean[:count], drawn.mean(0))
        torch.testing.assert_close(spread[:count], drawn.std(0, unbiased=False))


def test_mc_dropout_needs_dropout_and_the_refer_column_follows_the_band(trained_run, tmp_path):
    images = _images(tmp_path)
    with Run.open(trained_run, progress=False) as run:
        with pytest.raises(ConfigError, match="no dropout layer"):
            predict(run, PredictOptions(tuple(images), tmp_path / "m.csv", uncertainty="mc_dropout"))
        with pytest.raises(ConfigError, match="needs a cross-validation folder"):
            predict(run, PredictOptions(tuple(images), tmp_path / "e.csv", uncertainty="ensemble"))
        with pytest.raises(ConfigError, match="choose one"):
            predict(run, PredictOptions(tuple(images), tmp_path / "m.csv", tta=True, uncertainty="mc_dropout"))
        written = predict(run, PredictOptions(tuple(images), tmp_path / "p.csv", uncertainty="tta",
                                              refer_sensitivity=0.95))  # fmt: skip
    rows = list(csv.DictReader(open(written.out, newline="")))
    assert len(rows) == 3 and all(row["refer"] in ("yes", "no") and float(row["uncertainty"]) >= 0 for row in rows)


def test_mc_dropout_samples_with_dropout_on_and_leaves_the_model_as_it_was(trained_run):
    with Run.open(trained_run, progress=False) as run:
        model = run.model()
        layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert layers, "the tiny model has a head dropout layer (p = 0 unless set)"
        for layer in layers:
            layer.p = 0.5
        loader = run.loader(DataSelection(split="test"))
        mean, spread, _ = predict_with_uncertainty(run, loader, "mc_dropout", samples=8)
        again, _, _ = predict_with_uncertainty(run, loader, "mc_dropout", samples=8)
        assert (spread > 0).all() and torch.equal(mean, again)  # seeded: the same samples each time
        assert not any(layer.training for layer in layers) and not model.training
