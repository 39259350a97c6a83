"""Cross-validation end to end: one run per fold, the test split held out from all, resumable; the folder opens as
the ensemble of its folds, and its evaluation gives each fold, their mean and spread, and the ensemble."""

import json

import pytest
import torch

from attnscope import cli
from attnscope.engine.config import load_config
from attnscope.engine.ensemble import FoldEnsembleRun
from attnscope.engine.folds import evaluate_folds
from attnscope.engine.inference import EvaluateOptions, predict_loader
from attnscope.engine.metrics import summarize
from attnscope.engine.run import DataSelection, Run
from attnscope.training.folds import resume_folds, train_folds
from tests.runs import tiny_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folds_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv") / "cv"
    train_folds(load_config(None, tiny_settings(root, epochs=1)), 2)
    return root


def _fold_probabilities(root):
    runs = [Run.open(root / f"fold{fold}", progress=False) for fold in (1, 2)]
    return runs, [predict_loader(run, run.loader(DataSelection(split="test"))) for run in runs]


def test_each_fold_validates_its_part_and_every_fold_holds_out_the_same_test_split(folds_root):
    splits = []
    for fold in (1, 2):
        with open(folds_root / f"fold{fold}" / "split.csv") as handle:
            splits.append({line.split(",")[0]: line.rsplit(",", 1)[1].strip() for line in handle.readlines()[1:]})
    tests = [{i for i, s in split.items() if s == "test"} for split in splits]
    vals = [{i for i, s in split.items() if s == "val"} for split in splits]
    assert tests[0] == tests[1] and vals[0].isdisjoint(vals[1]) and vals[0] | vals[1] == set(splits[0]) - tests[0]


def test_resuming_a_finished_folder_keeps_its_folds(folds_root):
    weights = folds_root / "fold1" / "checkpoints" / "best.safetensors"
    before = weights.stat().st_mtime_ns
    resume_folds(folds_root, progress=False)
    assert weights.stat().st_mtime_ns == before


def test_the_folder_opens_as_the_ensemble_of_its_folds(folds_root, tmp_path):
    runs, probs = _fold_probabilities(folds_root)
    assert torch.equal(probs[0][2], probs[1][2])  # the same test rows in the same order
    with Run.open(folds_root, progress=False) as ensemble:
        assert isinstance(ensemble, FoldEnsembleRun) and ensemble.root == folds_root
        found, _, _ = predict_loader(ensemble, ensemble.loader(DataSelection(split="test")))
        # each fold normalised as it trained, calibrated by its own temperature, then averaged
        torch.testing.assert_close(found, (probs[0][0] + probs[1][0]) / 2, atol=1e-5, rtol=0)
        logits = torch.logit(torch.tensor([runs[0].threshold, runs[1].threshold], dtype=torch.float64))
        assert ensemble.threshold == pytest.approx(float(torch.sigmoid(logits.mean())))
    assert cli.main(["export", str(folds_root), "--out", str(tmp_path / "m.onnx"), "--check-images", "4"]) == 0


def test_the_folder_evaluation_gives_the_folds_their_spread_and_the_ensemble(folds_root):
    result = evaluate_folds(folds_root, EvaluateOptions(bootstrap=50), progress=False)
    assert len(result.folds) == 2
    assert result.mean["auc"] == pytest.approx((result.folds[0]["auc"] + result.folds[1]["auc"]) / 2)
    runs, probs = _fold_probabilities(folds_root)
    expected = summarize((probs[0][0] + probs[1][0]) / 2, probs[0][1], "binary", runs[0].classes)
    assert result.ensemble["auc"] == pytest.approx(expected["auc"], abs=1e-6)
    summary = json.loads((folds_root / "evaluation" / "folds.json").read_text())
    assert set(summary) == {"folds", "mean", "sd", "data"} and (folds_root / "evaluation" / "metrics.json").is_file()
    assert cli.main(["evaluate", str(folds_root), "--bootstrap", "20", "--no-progress"]) == 0
    assert "A fold ensemble" in (folds_root / "report.html").read_text()


def test_the_folds_spread_is_each_images_uncertainty(folds_root):
    from attnscope.engine.uncertainty import predict_with_uncertainty

    _, probs = _fold_probabilities(folds_root)
    with Run.open(folds_root, progress=False) as ensemble:
        mean, spread, _ = predict_with_uncertainty(ensemble, ensemble.loader(DataSelection(split="test")), "ensemble")
    stacked = torch.stack([probs[0][0], probs[1][0]])
    torch.testing.assert_close(mean, stacked.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(spread, stacked.std(0, unbiased=False), atol=1e-5, rtol=0)


def test_the_served_ensemble_gives_each_prediction_its_spread_over_the_folds(folds_root):
    import numpy as np

    from attnscope.serve import ModelService

    images = [np.random.default_rng(seed).integers(0, 256, (3, 32, 32), dtype=np.uint8) for seed in range(3)]
    with Run.open(folds_root, progress=False) as ensemble:
        service = ModelService(ensemble)
        answers = service.predict(images)
        inputs, _ = ensemble.transform(torch.from_numpy(np.stack(images)))
        with torch.no_grad():
            drawn = ensemble.model().fold_probabilities(inputs)
    assert [a["uncertainty"] for a in answers] == pytest.approx(drawn.std(0, unbiased=False).tolist(), abs=1e-6)
    assert [a["probabilities"]["malignant"] for a in answers] == pytest.approx(drawn.mean(0).tolist(), abs=1e-6)
