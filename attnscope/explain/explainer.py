"""Explain a trained run: its attention maps and CAMs side by side, drawn and scored.

``explain_run`` takes a run, a set of images (files, the run's own split, or
another source) and a list of methods; for each image it writes one overlay
figure (input | every attention tap | every CAM), the raw maps as ``.npz``, and
a row per method to ``scores.csv``: deletion and insertion AUC always,
pointing game, energy and Jaccard when the images have masks.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from attnscope.data.loader import BatchLoader
from attnscope.engine.inference import LoadedRun, evaluation_rows, file_loader, load_run
from attnscope.engine.metrics import class_probabilities, probabilities
from attnscope.errors import ConfigError
from attnscope.explain.cam import CAM_METHODS, create_cam, normalise, predicted_classes
from attnscope.explain.overlay import upsample, write_attention_grid
from attnscope.layers.tap import capture_attention, native_maps
from attnscope.explain.scores import deletion_insertion, localisation_scores
from attnscope.fileio import atomic_write

log = logging.getLogger(__name__)

METHODS = ("attention", *CAM_METHODS)
SCORE_NAMES = ("pointing_game", "energy", "jaccard", "deletion_auc", "insertion_auc")


def resolve_methods(methods: list[str] | str) -> list[str]:
    """``all`` or a list of method names, checked."""
    if isinstance(methods, str):
        methods = [methods]
    if "all" in methods:
        return list(METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"unknown explanation method(s) {unknown}; known: all, {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


@dataclass
class BatchExplanation:
    """Maps of one batch: ``maps`` label -> (B, H, W) in [0, 1]; ``raw`` label -> the unscaled map."""

    inputs: torch.Tensor
    targets: torch.Tensor
    probabilities: torch.Tensor
    maps: dict[str, torch.Tensor]
    raw: dict[str, torch.Tensor]


def explain_batch(
    run: LoadedRun,
    images_u8: torch.Tensor,
    methods: list[str],
    cam_layers: list[str] | None = None,
    require_attention: bool = False,
) -> BatchExplanation:
    """Attention maps (one label per spatial tap: ``attention:<tap>``) and CAMs of the predicted class.

    A model without spatial attention maps (a plain or SE network) has no attention to show:
    that is an error when ``require_attention`` (the user asked for it by name), else skipped.
    """
    inputs, _ = run.transform(images_u8)
    with torch.no_grad():
        logits = run.model(inputs)
    targets = predicted_classes(logits) if run.kind != "multilabel" else logits.argmax(1)
    maps: dict[str, torch.Tensor] = {}
    raw: dict[str, torch.Tensor] = {}
    if "attention" in methods:
        with torch.no_grad(), capture_attention(run.model, detach=True) as captured:
            run.model(inputs)
        native = native_maps(captured)
        if not native and (require_attention or methods == ["attention"]):
            raise ConfigError(
                f"{run.config.model.name} has no spatial attention maps to show; "
                "use a CAM method (--method gradcam) or a model with spatial attention"
            )
        for tap, values in upsample(native, tuple(inputs.shape[-2:])).items():
            maps[f"attention:{tap}"], raw[f"attention:{tap}"] = normalise(values), native[tap]
    for method in methods:
        if method in CAM_METHODS:
            result = create_cam(method, run.model, cam_layers).compute(inputs, targets)
            maps[method] = result.maps
            raw[method] = next(iter(result.raw.values())) if len(result.raw) == 1 else result.maps
    probs = class_probabilities(probabilities(logits, run.kind), run.kind)
    return BatchExplanation(inputs, targets, probs.gather(1, targets[:, None])[:, 0], maps, raw)


def score_batch(
    run: LoadedRun, explanation: BatchExplanation, masks: torch.Tensor | None, steps: int = 16, threshold: float = 0.5
) -> dict[str, dict[str, torch.Tensor]]:
    """Per label: localisation scores (when ``masks``) and deletion/insertion AUC, each (B,)."""
    activation = "sigmoid" if run.kind == "multilabel" else "auto"
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for label, values in explanation.maps.items():
        entry: dict[str, torch.Tensor] = {}
        if masks is not None:
            entry.update(localisation_scores(values, masks[:, 0], threshold))
        curves = deletion_insertion(
            run.model, explanation.inputs, values, explanation.targets, steps, activation=activation
        )
        entry["deletion_auc"], entry["insertion_auc"] = curves["deletion_auc"], curves["insertion_auc"]
        scores[label] = entry
    return scores


def _safe(name: str) -> str:
    """A file or array name: ``gradcam++`` -> ``gradcampp``, ``attention:pool3`` -> ``attention_pool3``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("+", "p"))


def _summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean of every score per method, NaN-free (images without a target are left out)."""
    summary: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(row["method"] for row in rows):
        entry = {}
        for name in SCORE_NAMES:
            values = [row[name] for row in rows if row["method"] == method and not math.isnan(row.get(name, math.nan))]
            if values:
                entry[name] = float(np.mean(values))
        entry["images"] = sum(1 for row in rows if row["method"] == method)
        summary[method] = entry
    return summary


def explain_run(
    run_dir: str | Path,
    out: str | Path,
    images: list[str] | None = None,
    methods=("all",),
    source: str | None = None,
    source_options: dict | None = None,
    split: str = "test",
    count: int | None = 16,
    weights: str = "best",
    steps: int = 16,
    cam_layers: list[str] | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    alpha: float = 0.4,
    cmap: str = "jet",
    run: LoadedRun | None = None,
    loader: BatchLoader | None = None,
) -> dict:
    """Overlays, raw maps and ``scores.csv`` for ``images`` (or the first ``count`` of a split/source).

    Overlays blend ``cmap`` (any matplotlib colour map) over the image with weight ``alpha``.
    ``run`` and ``loader`` (the split's or source's) spare reading them again when the caller has them.
    """
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha={alpha} must lie in [0, 1] (the heat map's weight over the image)")
    from matplotlib import colormaps

    if cmap not in colormaps:
        raise ConfigError(f"unknown colour map {cmap!r}; e.g. jet, viridis, inferno, turbo (matplotlib's names)")
    run = run or load_run(run_dir, weights)
    explicit_attention = "attention" in methods and "all" not in methods
    methods = resolve_methods(list(methods))
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="attnscope-explain-") as scratch:
        if images:
            loader = file_loader(run, images, scratch, skip_bad, progress)
        elif loader is None:
            loader = evaluation_rows(run, source, source_options, split, progress, skip_bad)
        manifest = loader.decoded.manifest
        total = len(loader.sampler) if not count else min(count, len(loader.sampler))
        rows: list[dict] = []
        figures: list[Path] = []
        done = 0
        with tqdm(total=total, desc="explain", disable=not progress, leave=False) as bar:
            for batch in loader:
                take = min(len(batch["row"]), total - done)
                if take <= 0:
                    break
                images_u8 = batch["image"][:take]
                masks = batch["mask"][:take] if "mask" in batch else None
                explanation = explain_batch(run, images_u8, methods, cam_layers, explicit_attention)
                scores = score_batch(run, explanation, masks, steps)
                for position, row in enumerate(batch["row"][:take].tolist()):
                    identifier = manifest.ids[row]
                    target = int(explanation.targets[position])
                    truth = manifest.label_text(row) if not images else ""
                    title = (
                        f"{identifier}\n{'true ' + truth + ', ' if truth else ''}"
                        f"p({run.classes[target]})={float(explanation.probabilities[position]):.2f}"
                    )
                    figures.append(
                        write_attention_grid(
                            images_u8[position : position + 1],
                            {k: v[position : position + 1] for k, v in explanation.maps.items()},
                            [title],
                            out / "overlays" / f"{_safe(identifier)}.png",
                            alpha,
                            cmap,
                            normalise_maps=False,
                        )
                    )
                    buffer = io.BytesIO()
                    np.savez_compressed(buffer, **{_safe(k): v[position].numpy() for k, v in explanation.raw.items()})
                    atomic_write(out / "maps" / f"{_safe(identifier)}.npz", buffer.getvalue())
                    for label, values in scores.items():
                        rows.append(
                            {
                                "id": identifier,
                                "truth": truth,
                                "target": run.classes[target],
                                "probability": float(explanation.probabilities[position]),
                                "method": label,
                                **{name: float(values[name][position]) for name in SCORE_NAMES if name in values},
                            }
                        )
                done += take
                bar.update(take)
    columns = ["id", "truth", "target", "probability", "method", *[n for n in SCORE_NAMES if any(n in r for r in rows)]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    atomic_write(out / "scores.csv", buffer.getvalue())
    return {
        "out": str(out),
        "images": done,
        "methods": list(dict.fromkeys(r["method"] for r in rows)),
        "summary": _summary(rows),
        "overlays": [str(f) for f in figures],
        "has_masks": "pointing_game" in columns,
    }
