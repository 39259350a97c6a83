"""Fitting a run's calibration: the temperature of its weights on its validation split, written with the weights
it belongs to, used by every consumer, and ignored for other weights."""

import json
import shutil

import pytest
import torch
from torch.nn import functional as F

from attnscope import cli
from attnscope.engine.calibration import carry_threshold, fit_temperature
from attnscope.engine.inference import EvaluateOptions, evaluate
from attnscope.engine.recalibrate import calibrate_run, split_logits
from attnscope.engine.run import Run
from attnscope.engine.rundir import read_json


@pytest.fixture
def copied_run(trained_run, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(trained_run, root, ignore=shutil.ignore_patterns("evaluation*", "explain*", "report*"))
    return root


def test_the_fitted_temperature_is_the_one_of_the_validation_logits_and_lowers_their_nll(copied_run):
    (copied_run / "calibration.json").unlink()
    with Run.open(copied_run, progress=False) as run:
        assert run.temperature is None and run.threshold == read_json(run.paths.best)["threshold"]
        values = calibrate_run(run)
        logits, labels = split_logits(run, "val")
        assert values["temperature"] == pytest.approx(fit_temperature(logits, labels, "binary"))
        before = F.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
        after = F.binary_cross_entropy_with_logits(logits[:, 0] / values["temperature"], labels.float())
        assert after <= before + 1e-6
        assert run.temperature == values["temperature"]  # the run uses it at once
        assert run.threshold == pytest.approx(carry_threshold(read_json(run.paths.best)["threshold"], run.temperature))
        images, _ = run.transform(next(iter(run.loader()))["image"])
        with torch.no_grad():
            raw = run.model()(images)
        torch.testing.assert_close(run.probabilities(raw), torch.sigmoid(raw[:, 0] / values["temperature"]))
    assert read_json(copied_run / "calibration.json")["weights_sha256"] == Run.open(copied_run).weights_sha256()


def test_a_run_opened_with_other_weights_is_left_uncalibrated(copied_run):
    with Run.open(copied_run, weights="last", progress=False) as run:
        assert run.temperature is None  # fitted to the best weights, not to these
        assert run.threshold == read_json(run.paths.best)["threshold"]


def test_evaluate_shows_the_calibration_before_and_after(copied_run, tmp_path):
    with Run.open(copied_run, progress=False) as run:
        metrics = evaluate(run, EvaluateOptions(out=tmp_path / "ev")).metrics
        assert metrics["temperature"] == run.temperature
        assert set(metrics["calibration"]) == set(metrics["calibration_uncalibrated"])
        assert metrics["calibration"]["brier"] != metrics["calibration_uncalibrated"]["brier"]
    (copied_run / "calibration.json").unlink()
    with Run.open(copied_run, progress=False) as run:
        metrics = evaluate(run, EvaluateOptions(out=tmp_path / "ev2")).metrics
        assert "calibration_uncalibrated" not in metrics and "calibration" in metrics


def test_the_calibrate_verb_fits_and_says_what_changed(copied_run, capsys):
    (copied_run / "calibration.json").unlink()
    assert cli.main(["calibrate", str(copied_run), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    fitted = json.loads((copied_run / "calibration.json").read_text())
    assert f"temperature {fitted['temperature']}" in printed and "validation ECE" in printed
