"""How sure the model is of one image: the spread of its probability over flips, dropout samples or folds.

``tta``: the flips the run was trained with (a model that learnt them should not
care; where it does, it is unsure). ``mc_dropout``: the dropout layers left on at
inference, ``samples`` passes (Gal and Ghahramani 2016), for models trained with
dropout. ``ensemble``: the folds of a cross-validation folder (``train --folds``),
each model trained on other images (Lakshminarayanan et al. 2017's deep ensembles).
Each image gets the mean probability and its standard deviation (per finding for
multi-label, of the positive class for binary, of the top class for multi-class);
the mean is what the decision is made on.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from attnscope.data.loader import BatchLoader
from attnscope.engine.run import Run
from attnscope.engine.tta import flip_views, view
from attnscope.errors import ConfigError, DataError

UNCERTAINTY_METHODS = ("tta", "mc_dropout", "ensemble")


def _dropouts(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def _samples(run: Run, images: torch.Tensor, method: str, samples: int) -> torch.Tensor:
    """(S, B, ...) calibrated probabilities of one batch under each view or dropout sample."""
    model = run.model()
    if method == "ensemble":
        if not hasattr(model, "fold_probabilities"):
            raise ConfigError(
                f"--uncertainty ensemble needs a cross-validation folder (train --folds); {run.root} is one run"
            )
        return model.fold_probabilities(images)  # type: ignore[operator]
    if method == "tta":
        views = flip_views(run.config.data.augment)
        if len(views) < 2:
            raise ConfigError(f"{run.root} was trained without flips: there is no test-time view to compare; "
                              "use --uncertainty mc_dropout on a model with dropout")  # fmt: skip
        return torch.stack([run.probabilities(model(view(images, name))) for name in views])
    layers = _dropouts(model)
    if not layers:
        raise ConfigError(
            f"{run.name} has no dropout layer with p > 0 (model option dropout=...); use --uncertainty tta"
        )
    try:
        for layer in layers:
            layer.train()
        return torch.stack([run.probabilities(model(images)) for _ in range(samples)])
    finally:
        for layer in layers:
            layer.eval()


@torch.no_grad()
def predict_with_uncertainty(
    run: Run, loader: BatchLoader, method: str, samples: int = 20, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean probabilities, their standard deviation over the views or samples, and the manifest rows."""
    if method not in UNCERTAINTY_METHODS:
        raise ConfigError(f"uncertainty={method!r}: use one of {', '.join(UNCERTAINTY_METHODS)}")
    torch.manual_seed(seed)
    means, spreads, rows = [], [], []
    for batch in tqdm(loader, desc="predict", disable=not run.progress, leave=False):
        images, _ = run.transform(batch["image"])
        drawn = _samples(run, images, method, samples)
        means.append(drawn.mean(0))
        spreads.append(drawn.std(0, unbiased=False))
        rows.append(batch["row"])
    if not means:
        raise DataError("no images to predict")
    return torch.cat(means), torch.cat(spreads), torch.cat(rows)


def spread_of_decision(probs: torch.Tensor, spread: torch.Tensor, kind: str) -> torch.Tensor:
    """The standard deviation that matters for the decision: of the positive class (binary, as given), of the top
    class (multi-class), of each finding (multi-label, as given)."""
    if kind == "multiclass":
        return spread.gather(1, probs.argmax(1, keepdim=True))[:, 0]
    return spread
