"""The fold ensemble of a cross-validation folder as one run: ``Run.open(FOLDER)`` for predict, explain, serve
and export.

Each fold's calibrated probabilities are averaged image by image, and the average is
returned as logits (so that the softmax or sigmoid every consumer applies gives it
back): the ensemble needs no temperature of its own. Its threshold is the mean of the
folds' thresholds in logits. Its CAMs are taken at the first fold's default layer
(the gradient of the ensemble's output through that fold's features); its attention
maps are every fold's, named ``fold1.pool3``, ``fold2.pool3``, ...
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnscope.engine.metrics import probabilities
from attnscope.engine.run import Run


class FoldEnsemble(nn.Module):
    """Models whose calibrated probabilities are averaged; logits of the average out."""

    def __init__(
        self, models: list[nn.Module], temperatures: list[Any], kind: str, normalisations: list[tuple[Any, Any]]
    ) -> None:
        """``normalisations``: each fold's (scale, shift) of uint8 pixels (its training split's mean and std); the
        ensemble takes images normalised as the first fold's and gives each fold its own."""
        super().__init__()
        scale, shift = normalisations[0]
        for index, (fold_scale, fold_shift) in enumerate(normalisations):
            ratio = fold_scale / scale  # x_fold = (x - shift) / scale * fold_scale + fold_shift
            self.register_buffer(f"ratio{index}", ratio.clone())
            self.register_buffer(f"offset{index}", (fold_shift - shift * ratio).clone())
        self.names = [f"fold{i + 1}" for i in range(len(models))]
        for name, model in zip(self.names, models, strict=True):
            self.add_module(name, model)  # fold1.features...: the folds' layers and taps named by their fold
        self.temperatures = [1.0 if t is None else t for t in temperatures]
        self.kind = kind
        first: Any = getattr(models[0], "default_cfg")  # noqa: B009 (a module attribute, not a tensor)
        self.default_cfg = replace(first, cam_target_layer=f"fold1.{first.cam_target_layer}")

    def fold_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(folds, B, ...) each fold's calibrated probabilities of ``images`` (normalised as the first fold's)."""
        outputs = []
        for index, (name, temperature) in enumerate(zip(self.names, self.temperatures, strict=True)):
            model = getattr(self, name)
            logits = model(images * getattr(self, f"ratio{index}") + getattr(self, f"offset{index}"))
            scale = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
            outputs.append(probabilities(logits / scale, self.kind))
        return torch.stack(outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = self.fold_probabilities(images).mean(0).clamp(1e-7, 1 - 1e-7)
        if self.kind == "multiclass":
            return mean.log()
        logits = torch.log(mean / (1 - mean))
        return logits.unsqueeze(-1) if logits.dim() == 1 else logits  # binary: one logit per image


class FoldEnsembleRun(Run):
    """A cross-validation folder opened as one run: its folds' ensemble (see the module)."""

    members: list[Run]
    folds_root: Path

    @classmethod
    def open_folds(
        cls, root: Path, folders: list[Path], weights: str = "best", progress: bool = True
    ) -> FoldEnsembleRun:
        members = [Run.open(folder, weights, progress) for folder in folders]
        first = members[0]
        run = cls(first.paths, first.config, first.summary, first.best, weights, progress)
        run.members, run.folds_root = members, Path(root)
        return run

    @property
    def root(self) -> Path:
        return self.folds_root

    @property
    def calibration(self) -> dict:
        return {"method": "per fold", "fitted_on": "each fold's validation part"}

    @property
    def threshold(self) -> float | list[float] | None:
        thresholds = [member.threshold for member in self.members]
        if thresholds[0] is None:
            return None
        values = np.array(thresholds, dtype=np.float64).reshape(len(thresholds), -1).clip(1e-7, 1 - 1e-7)
        mean = 1 / (1 + np.exp(-np.log(values / (1 - values)).mean(0)))
        return [float(v) for v in mean] if isinstance(thresholds[0], list) else float(mean[0])

    def weights_sha256(self, weights: str | None = None) -> str:
        digest = hashlib.sha256()
        for member in self.members:
            digest.update(member.weights_sha256(weights).encode())
        return digest.hexdigest()

    def model(self, weights: str | None = None) -> nn.Module:
        key = Path(f"ensemble:{weights or self.weights}")
        if key not in self._models:
            models = [member.model(weights) for member in self.members]
            normalisations = [(m.transform.scale, m.transform.shift) for m in self.members]
            temperatures = [m.temperature for m in self.members]
            self._models[key] = FoldEnsemble(models, temperatures, self.kind, normalisations).eval()
        return self._models[key]

    def close(self) -> None:
        for member in self.members:
            member.close()
        super().close()
