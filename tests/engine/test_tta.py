"""Test-time augmentation: the flips a run was trained with, averaged, with the threshold chosen again."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from attnscope.data.augment import AugmentConfig
from attnscope.engine.inference import EvaluateOptions, PredictOptions, evaluate, predict
from attnscope.engine.metrics import probabilities, summarize
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.tta import averaged, flip_views, view
from attnscope.errors import ConfigError


def test_the_views_are_the_flips_training_drew():
    assert flip_views(AugmentConfig()) == ("none", "hflip", "vflip", "hvflip")
    assert flip_views(AugmentConfig(vflip=False)) == ("none", "hflip")
    assert flip_views(AugmentConfig(hflip=False)) == ("none", "vflip")
    for never in (AugmentConfig(hflip=False, vflip=False), AugmentConfig(p=0.0)):
        with pytest.raises(ConfigError, match="data.augment drew none .*evaluate without --tta"):
            flip_views(never)


def test_views_flip_width_height_or_both():
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
    assert torch.equal(view(images, "none"), images)
    assert torch.equal(view(images, "hflip")[..., 0], images[..., 2])
    assert torch.equal(view(images, "vflip")[..., 0, :], images[..., 1, :])
    assert torch.equal(view(images, "hvflip"), torch.rot90(images, 2, dims=(-2, -1)))


def test_averaged_is_the_mean_of_the_predictions_on_each_view():
    torch.manual_seed(0)
    weights = torch.randn(3, 16)

    def predict(x):
        return torch.softmax(x.flatten(1) @ weights.T, dim=1)

    images = torch.randn(5, 1, 4, 4)
    expected = (predict(images) + predict(images.flip(-1))) / 2
    torch.testing.assert_close(averaged(predict, images, ("none", "hflip")), expected)
    mapped = averaged(lambda x: {"a": predict(x), "b": 2 * predict(x)}, images, ("none", "hflip"))
    torch.testing.assert_close(mapped["a"], expected)
    torch.testing.assert_close(mapped["b"], 2 * expected)


def _reference_probabilities(
    run: Run, split: str, views: tuple[str, ...], images=()
) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's probabilities on ``split`` (or ``images``), each averaged over ``views`` by hand."""
    model, probs, labels = run.model(), [], []
    with torch.no_grad():
        for batch in run.loader(DataSelection(split=split, images=tuple(images))):
            images, _ = run.transform(batch["image"])
            flips = {"none": (), "hflip": (3,), "vflip": (2,), "hvflip": (2, 3)}
            logits = [model(images.flip(flips[v]) if flips[v] else images) / run.temperature for v in views]
            outputs = [probabilities(value, run.kind) for value in logits]  # calibrated: logits over the temperature
            probs.append(torch.stack(outputs).mean(0))
            labels.append(batch["label"])
    return torch.cat(probs), torch.cat(labels)


@pytest.mark.slow
def test_evaluate_with_tta_averages_the_flips_and_chooses_the_threshold_on_validation_the_same_way(
    trained_run, tmp_path
):
    with Run.open(trained_run, progress=False) as run:
        result = evaluate(run, EvaluateOptions(tta=True, out=tmp_path / "tta"))
        views = ("none", "hflip", "vflip", "hvflip")  # the tiny run trains with the default flips
        val_probs, val_labels = _reference_probabilities(run, "val", views)
        test_probs, test_labels = _reference_probabilities(run, "test", views)
        plain = evaluate(run, EvaluateOptions(out=tmp_path / "plain")).metrics
    threshold = summarize(val_probs, val_labels, "binary", run.classes)["threshold"]
    expected = summarize(test_probs, test_labels, "binary", run.classes, threshold=threshold)
    assert result.metrics["tta"] == list(views)
    assert result.metrics["threshold"] == pytest.approx(threshold)
    for key in ("auc", "ap", "accuracy", "sensitivity_youden", "specificity_youden"):
        assert result.metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert result.metrics["auc"] != plain["auc"] or result.metrics["ap"] != plain["ap"]  # the views changed something
    assert (tmp_path / "tta" / "metrics.json").is_file() and "tta" not in plain


def test_predict_with_tta_writes_averaged_probabilities_decided_at_the_tta_threshold(trained_run, tmp_path):
    generator = np.random.default_rng(0)
    images = []
    for number in range(6):
        path = tmp_path / f"image{number}.png"
        Image.fromarray(generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    views = ("none", "hflip", "vflip", "hvflip")
    with Run.open(trained_run, progress=False) as run:
        result = predict(run, PredictOptions(tuple(images), out=tmp_path / "p.csv", tta=True))
        expected, _ = _reference_probabilities(run, "test", views, images)
        val_probs, val_labels = _reference_probabilities(run, "val", views)
        classes = run.classes
    threshold = summarize(val_probs, val_labels, "binary", classes)["threshold"]
    rows = list(csv.DictReader(open(result.out, encoding="utf-8")))
    assert result.rows == 6 and [row["path"] for row in rows] == images
    written = torch.tensor([float(row[f"prob_{classes[1]}"]) for row in rows])
    torch.testing.assert_close(written, expected.flatten(), atol=1e-6, rtol=0)
    assert [row["predicted"] for row in rows] == [classes[int(p >= threshold)] for p in expected.flatten().tolist()]
