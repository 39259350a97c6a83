"""Fitting a run's calibration: temperature scaling on its validation split, written to ``calibration.json``.

``train`` calls :func:`calibrate_run` when it finishes (``trainer.calibration:
temperature``, the default); ``attnscope calibrate RUN`` fits a run trained before,
or fits again after new weights. The file names the weights it was fitted to (their
SHA-256): opened with other weights, a run is left uncalibrated rather than
calibrated for someone else's logits.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from tqdm.auto import tqdm

from attnscope.engine.calibration import calibration_scores, carry_threshold, fit_temperature, scale_logits
from attnscope.engine.metrics import probabilities
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.rundir import write_json
from attnscope.errors import DataError

log = logging.getLogger(__name__)


@torch.no_grad()
def split_logits(run: Run, split: str = "val") -> tuple[torch.Tensor, torch.Tensor]:
    """The model's raw logits (no temperature) and the labels of a split."""
    model = run.model()
    logits, labels = [], []
    for batch in tqdm(run.loader(DataSelection(split=split)), desc="calibrate", disable=not run.progress, leave=False):
        images, _ = run.transform(batch["image"])
        logits.append(model(images).float())
        labels.append(batch["label"])
    if not logits:
        raise DataError(f"{run.root}: the {split} split holds no images to calibrate on")
    return torch.cat(logits), torch.cat(labels)


def _carried(threshold: Any, temperature: float | list[float]) -> Any:
    """The validation threshold(s) on the calibrated scale (the same decisions)."""
    if threshold is None:
        return None
    if isinstance(threshold, list):
        return [carry_threshold(float(t), float(T)) for t, T in zip(threshold, temperature, strict=True)]  # type: ignore[arg-type]
    return carry_threshold(float(threshold), float(temperature))  # type: ignore[arg-type]


def calibrate_run(run: Run) -> dict[str, Any]:
    """Fit the temperature of ``run``'s weights on its validation split and write ``calibration.json``.

    Args:
        run: the opened run (its weights as opened).

    Returns:
        What ``calibration.json`` holds: the temperature, the validation threshold carried to the calibrated
        scale, and the validation split's calibration before and after (ECE, MCE, Brier score)."""
    logits, labels = split_logits(run, "val")
    temperature = fit_temperature(logits, labels, run.kind)
    before = calibration_scores(probabilities(logits, run.kind), labels, run.kind)
    after = calibration_scores(probabilities(scale_logits(logits, temperature), run.kind), labels, run.kind)
    values = {
        "method": "temperature",
        "temperature": temperature,
        "threshold": _carried(run.best.get("threshold"), temperature),
        "weights": run.weights,
        "weights_sha256": run.weights_sha256(),
        "fitted_on": f"val split ({len(labels)} images)",
        "val_before": before,
        "val_after": after,
    }
    write_json(run.paths.calibration, values)
    run.__dict__.pop("calibration", None)  # the cached (empty or older) calibration no longer holds
    log.info("temperature scaling on %s: T = %s; val ECE %.4f -> %.4f", values["fitted_on"], temperature,
             before["ece"], after["ece"])  # fmt: skip
    return values
