"""Explain a trained run: its attention maps and CAMs side by side, drawn and scored.

``explain`` takes a run, a set of images (files, the run's own split, or
another source) and a list of methods; for each image it writes one overlay
figure (input | every attention tap | every CAM), the raw maps as ``.npz``, and
a row per method to ``scores.csv``: deletion and insertion AUC and the
confidence change always, ROAD (MoRF and LeRF) when asked, pointing game, energy
and Jaccard when the images have masks.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from attnscope.data.loader import BatchLoader
from attnscope.data.sources.files import IMAGE_EXTENSIONS
from attnscope.engine.metrics import class_probabilities
from attnscope.engine.run import DataSelection, Run
from attnscope.errors import ConfigError
from attnscope.explain.cam import normalise, predicted_classes
from attnscope.explain.methods import CAM_METHODS, MAP_METHODS, create_cam
from attnscope.explain.overlay import upsample, write_attention_grid
from attnscope.explain.road import confidence_change, road
from attnscope.explain.sanity import Sanity, randomised_cascade, sanity_checks
from attnscope.explain.scores import deletion_insertion, localisation_scores
from attnscope.fileio import atomic_write, csv_text, sweep_temporaries
from attnscope.layers.tap import capture_attention, native_maps
from attnscope.models.vit import attention_modules
from attnscope.names import DEFAULT_EXPLAIN_METHODS, EXPLAIN_METHODS, TRANSFORMER_METHODS
from attnscope.outputs import EXPLANATION, prepare_output_folder

log = logging.getLogger(__name__)

METHODS = EXPLAIN_METHODS
SCORE_NAMES = (
    "pointing_game",
    "energy",
    "jaccard",
    "deletion_auc",
    "insertion_auc",
    "road_morf",
    "road_lerf",
    "drop_in_confidence",
    "increase_in_confidence",
)


def resolve_methods(methods: list[str] | str) -> list[str]:
    """Method names, checked, with the groups expanded: ``default`` (attention and the four one-pass CAMs)
    and ``all`` (every method, the slow perturbation ones too)."""
    if isinstance(methods, str):
        methods = [methods]
    if "all" in methods:
        return list(METHODS)
    groups = {"default": DEFAULT_EXPLAIN_METHODS}
    expanded = [name for method in methods for name in groups.get(method, (method,))]
    unknown = sorted(set(expanded) - set(METHODS))
    if unknown:
        raise ConfigError(f"unknown explanation method(s) {unknown}; known: all, default, {', '.join(METHODS)}")
    return list(dict.fromkeys(expanded))


def applicable_methods(methods: list[str], asked: list[str], model: torch.nn.Module) -> list[str]:
    """``methods`` without the transformer methods where ``model`` is no transformer and they came from a group
    (``all``); named on such a model, they are refused with what to use instead."""
    if attention_modules(model):
        return methods
    named = [method for method in asked if method in TRANSFORMER_METHODS]
    if named:
        raise ConfigError(
            f"{', '.join(named)} read a vision transformer's attention; {type(model).__name__} has none "
            "(use a vit_* or deit_* model, or a CAM method)"
        )
    return [method for method in methods if method not in TRANSFORMER_METHODS]


@dataclass
class BatchExplanation:
    """Maps of one batch: ``maps`` label -> (B, H, W) in [0, 1]; ``raw`` label -> the unscaled map."""

    inputs: torch.Tensor
    targets: torch.Tensor
    probabilities: torch.Tensor
    maps: dict[str, torch.Tensor]
    raw: dict[str, torch.Tensor]


def explain_batch(
    run: Run,
    images_u8: torch.Tensor,
    methods: list[str],
    cam_layers: Sequence[str] | None = None,
    require_attention: bool = False,
    map_options: Mapping[str, Any] | None = None,
    target: int | None = None,
    model: torch.nn.Module | None = None,
) -> BatchExplanation:
    """Attention maps (one label per spatial tap: ``attention:<tap>``) and CAMs of class ``target`` (a class
    index; None: each image's predicted class, the top label of a multi-label run).

    The logits and the attention maps come from one captured forward pass. A model
    without spatial attention maps (a plain or SE network) has no attention to show:
    that is an error when ``require_attention`` (the user asked for it by name), else skipped. ``model``
    replaces the run's (the sanity checks' randomised copies).
    """
    model = model if model is not None else run.model()
    inputs, _ = run.transform(images_u8)
    want_attention = "attention" in methods
    capture: contextlib.AbstractContextManager[dict[str, torch.Tensor]] = (
        capture_attention(model, detach=True) if want_attention else contextlib.nullcontext({})
    )
    with torch.no_grad(), capture as captured:
        logits = model(inputs)
    if target is not None:
        targets = torch.full((len(logits),), target, dtype=torch.long)
    else:
        targets = predicted_classes(logits) if run.kind != "multilabel" else logits.argmax(1)
    maps: dict[str, torch.Tensor] = {}
    raw: dict[str, torch.Tensor] = {}
    if want_attention:
        native = native_maps(captured)
        if not native and (require_attention or methods == ["attention"]):
            raise ConfigError(
                f"{run.name} has no spatial attention maps to show; "
                "use a CAM method (--method gradcam) or a model with spatial attention"
            )
        for tap, values in upsample(native, tuple(inputs.shape[-2:])).items():
            maps[f"attention:{tap}"], raw[f"attention:{tap}"] = normalise(values), native[tap]
    layers = list(cam_layers) if cam_layers else None
    for method in methods:
        if method in MAP_METHODS:
            result = _map_method(method, model, layers, dict(map_options or {})).compute(inputs, targets)
            maps[method] = result.maps
            raw[method] = next(iter(result.raw.values())) if len(result.raw) == 1 else result.maps
    probs = class_probabilities(run.probabilities(logits), run.kind)
    return BatchExplanation(inputs, targets, probs.gather(1, targets[:, None])[:, 0], maps, raw)


def run_sanity(run: Run, images_u8: torch.Tensor, methods: list[str], target: int | None = None) -> Sanity:
    """The sanity checks (:mod:`attnscope.explain.sanity`) of ``methods`` on these images: their maps from the
    trained model and from its randomised cascade, for the same classes."""
    trained = explain_batch(run, images_u8, methods, target=target)
    steps = []
    for randomised in randomised_cascade(run.model()):
        step = explain_batch(run, images_u8, methods, target=target, model=randomised)
        if not torch.equal(step.targets, trained.targets):  # the trained model's classes, not the random one's
            step = _per_image_targets(run, images_u8, methods, trained.targets, randomised)
        steps.append(step.maps)
    return sanity_checks(trained.maps, steps)


def _per_image_targets(
    run: Run, images_u8: torch.Tensor, methods: list[str], targets: torch.Tensor, model: torch.nn.Module
) -> BatchExplanation:
    """Maps of ``model`` for each image's class in ``targets``, one class at a time."""
    maps: dict[str, torch.Tensor] = {}
    for value in targets.unique().tolist():
        chosen = targets == value
        part = explain_batch(run, images_u8[chosen], methods, target=int(value), model=model)
        for label, values in part.maps.items():
            maps.setdefault(label, torch.zeros((len(images_u8), *values.shape[1:]), dtype=values.dtype))
            maps[label][chosen] = values
    return BatchExplanation(images_u8, targets, torch.zeros(len(targets)), maps, maps)


def resolve_targets(run: Run, target: str | int | None) -> list[int | None]:
    """The classes whose maps to draw: ``None`` (each image's predicted class), one class by name or index, or
    ``all`` (a map per class: per finding, for a multi-label chest X-ray run)."""
    if target is None:
        return [None]
    text = str(target).strip()
    if text == "all":
        return list(range(len(run.classes)))
    if text in run.classes:
        return [run.classes.index(text)]
    if text.isdigit() and int(text) < len(run.classes):
        return [int(text)]
    raise ConfigError(
        f"target={str(target)[:80]!r} is not a class of {run.name}: give a class name ({', '.join(run.classes)}), "
        f"an index from 0 to {len(run.classes) - 1}, or all"
    )


def _map_method(method: str, model: torch.nn.Module, layers: list[str] | None, options: dict[str, Any]):
    """``method`` with the options that apply to it: layers and ``eigen_smooth`` to the layer CAMs only."""
    if method not in CAM_METHODS:
        options.pop("eigen_smooth", None)
        return create_cam(method, model, None, **options)
    return create_cam(method, model, layers, **options)


def score_batch(
    run: Run,
    explanation: BatchExplanation,
    masks: torch.Tensor | None,
    steps: int = 16,
    threshold: float = 0.5,
    with_road: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per label: localisation scores (when ``masks``), deletion/insertion AUC, the confidence change and, with
    ``with_road``, ROAD (MoRF, LeRF), each (B,)."""
    activation = "sigmoid" if run.kind == "multilabel" else "auto"
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for label, values in explanation.maps.items():
        entry: dict[str, torch.Tensor] = {}
        if masks is not None:
            entry.update(localisation_scores(values, masks[:, 0], threshold))
        model, inputs, targets = run.model(), explanation.inputs, explanation.targets
        curves = deletion_insertion(model, inputs, values, targets, steps, activation=activation)
        entry["deletion_auc"], entry["insertion_auc"] = curves["deletion_auc"], curves["insertion_auc"]
        entry.update(confidence_change(model, inputs, values, targets, activation))
        if with_road:  # eight imputed images per map: the dearest score, so asked for
            removed = road(model, inputs, values, targets, activation=activation)
            entry["road_morf"], entry["road_lerf"] = removed["road_morf"], removed["road_lerf"]
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


@dataclass(frozen=True)
class ExplainOptions(DataSelection):
    """What to explain (default: the first ``count`` images of the test split) and how.

    ``methods``: ``all`` or names from :data:`METHODS` (default: attention and the four
    one-pass CAMs); ``count`` 0 or None: every image; ``steps``: points of the
    deletion/insertion curves; ``cam_layers``: CAM target layers (default: the model's);
    ``eigen_smooth`` (layer CAMs) and ``aug_smooth`` (every map method) as pytorch-grad-cam's;
    ``batch_size``: inputs per extra pass of the perturbation and pixel methods; ``road``: score
    ROAD too (eight imputed images per map: the dearest score); overlays
    blend ``cmap`` (a matplotlib colour map) over the image with weight ``alpha``, and
    ``overlays=False`` draws none (scoring hundreds of images: drawing is most of the time);
    ``target``: the class whose maps are drawn (:func:`resolve_targets`: a name, an index, ``all``; default each
    image's predicted class); ``out`` default ``RUN/explain``; ``sanity``: run the sanity checks
    (:mod:`attnscope.explain.sanity`) on that many of the images.
    """

    methods: Sequence[str] = ("default",)
    count: int | None = 16
    steps: int = 16
    cam_layers: Sequence[str] = ()
    eigen_smooth: bool = False
    aug_smooth: bool = False
    batch_size: int = 64
    road: bool = False
    overlays: bool = True
    alpha: float = 0.4
    cmap: str = "jet"
    target: str | None = None
    out: str | Path | None = None
    sanity: int = 0  # images the sanity checks run on (0: none); written to sanity.json

    def check(self) -> None:
        super().check()
        from matplotlib import colormaps

        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"batch_size={self.batch_size!r} must be an integer >= 1")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha={self.alpha} must lie in [0, 1] (the heat map's weight over the image)")
        if self.cmap not in colormaps:
            raise ConfigError(
                f"unknown colour map {self.cmap!r}; e.g. jet, viridis, inferno, turbo (matplotlib's names)"
            )

    def map_options(self) -> dict[str, Any]:
        return {"eigen_smooth": self.eigen_smooth, "aug_smooth": self.aug_smooth, "batch_size": self.batch_size}


@dataclass
class Explanation:
    """What :func:`explain` wrote: ``summary`` is the mean of every score per method."""

    out: Path
    images: int
    methods: list[str]
    summary: dict[str, dict[str, float]]
    overlays: list[Path]
    has_masks: bool
    sanity: Sanity | None = None


def explain(run: Run, options: ExplainOptions | None = None) -> Explanation:
    """Draw and score the maps of the run's attention and of the chosen CAM methods over the selected images.

    Args:
        run: the opened run.
        options: which images (default: the first 16 of the test split), the methods, the target class, the
            sanity checks, where to write (default ``RUN/explain``).

    Returns:
        The summary of every score per method (localisation against masks where there are some, else
        faithfulness), the overlays written, and the sanity checks where asked for.

    Raises:
        ConfigError: an unknown method or target class, named with the known ones.
    """
    options = options or ExplainOptions()
    options.check()
    explicit_attention = "attention" in options.methods  # asked for by name, not as part of a group
    methods = applicable_methods(resolve_methods(list(options.methods)), list(options.methods), run.model())
    out = prepare_output_folder(
        options.out if options.out is not None else run.root / options.folder_name("explain"), EXPLANATION
    )
    for folder in (out, out / "overlays", out / "maps"):
        sweep_temporaries(folder)
    targets = resolve_targets(run, options.target)
    loader = run.loader(options)
    # first, so that every overlay of a flagged method says so
    sanity = _sanity(run, loader, methods, targets[0], options.sanity, out) if options.sanity else None
    flags = sanity.flags() if sanity is not None else {}
    names = _FileNames()
    total = len(loader.sampler) if not options.count else min(options.count, len(loader.sampler))
    rows: list[dict] = []
    overlays: list[Path] = []
    done = 0
    with tqdm(total=total, desc="explain", disable=not run.progress, leave=False) as bar:
        for batch in loader:
            take = min(len(batch["row"]), total - done)
            if take <= 0:
                break
            images_u8 = batch["image"][:take]
            masks = batch["mask"][:take] if "mask" in batch else None
            for target in targets:
                explanation = explain_batch(
                    run, images_u8, methods, options.cam_layers, explicit_attention, options.map_options(), target
                )
                scores = score_batch(run, explanation, masks, options.steps, with_road=options.road)
                for position, row in enumerate(batch["row"][:take].tolist()):
                    record = _image_record(run, loader, row, explanation, position, labelled=not options.images)
                    name = names.unique(record["id"], None if len(targets) == 1 else record["target"])
                    drawn = _write_image(images_u8, explanation, position, record, out / name, options, flags)
                    overlays += [drawn] if drawn is not None else []
                    rows += _score_rows(record, scores, position)
            done += take
            bar.update(take)
    has_masks = _write_scores(rows, out / "scores.csv")
    found = list(dict.fromkeys(r["method"] for r in rows))
    return Explanation(out, done, found, _summary(rows), overlays, has_masks, sanity)


def _sanity(run: Run, loader: BatchLoader, methods: list[str], target: int | None, count: int, out: Path) -> Sanity:
    """The sanity checks on the first ``count`` images, written to ``sanity.json``."""
    images = next(iter(loader.head(count)))["image"]
    sanity = run_sanity(run, images, methods, target)
    values = {**sanity.as_dict(), "weights_sha256": run.weights_sha256()}  # the server shows them for these weights
    atomic_write(out / "sanity.json", json.dumps(values, indent=2) + "\n")
    return sanity


def _score_rows(record: dict, scores: dict[str, dict[str, torch.Tensor]], position: int) -> list[dict]:
    """One ``scores.csv`` row per method of one image."""
    return [
        {**record, "method": label, **{name: float(values[name][position]) for name in SCORE_NAMES if name in values}}
        for label, values in scores.items()
    ]


def _image_record(
    run: Run, loader: BatchLoader, row: int, explanation: BatchExplanation, position: int, labelled: bool
) -> dict:
    """The id, file, truth (when the images are labelled), explained class and its probability of one image."""
    manifest = loader.decoded.manifest
    return {
        "id": manifest.ids[row],
        "path": manifest.paths[row] if manifest.paths else "",
        "truth": manifest.label_text(row) if labelled else "",
        "target": run.classes[int(explanation.targets[position])],
        "probability": float(explanation.probabilities[position]),
    }


class _FileNames:
    """One file name per image: its id without its image extension (``scan.png`` -> ``scan``, so that the overlay
    is ``scan.png``, not ``scan.png.png``) made safe, with ``-2``, ``-3`` where two ids make the same name."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def unique(self, image_id: str, target: str | None = None) -> str:
        stem, suffix = os.path.splitext(image_id)
        base = _safe((stem if suffix.lower() in IMAGE_EXTENSIONS else image_id) + (f"-{target}" if target else ""))
        name, number = base, 1
        while name.lower() in self.used:  # case-insensitive: macOS and Windows file systems
            number += 1
            name = f"{base}-{number}"
        self.used.add(name.lower())
        return name


def _titled(label: str, flags: Mapping[str, str] | None) -> str:
    """A map's column title: its label, and the sanity checks' warning where they flagged it."""
    flag = (flags or {}).get(label, "")
    return f"{label}\n(!) {flag.removeprefix('this map ')}" if flag else label


def _write_image(
    images_u8: torch.Tensor,
    explanation: BatchExplanation,
    position: int,
    record: dict,
    out_name: Path,
    options: ExplainOptions,
    flags: Mapping[str, str] | None = None,
) -> Path | None:
    """One image's raw maps (``.npz``) and, unless ``options.overlays`` is off, its overlay figure,
    ``out_name`` being ``OUT/<name>``; the figure's path. A map the sanity checks flagged says so in its title."""
    truth = f"true {record['truth']}, " if record["truth"] else ""
    title = f"{record['id']}\n{truth}p({record['target']})={record['probability']:.2f}"
    out, name = out_name.parent, out_name.name
    figure = None
    if options.overlays:
        figure = write_attention_grid(
            images_u8[position : position + 1],
            {_titled(k, flags): v[position : position + 1] for k, v in explanation.maps.items()},
            [title],
            out / "overlays" / f"{name}.png",
            options.alpha,
            options.cmap,
            normalise_maps=False,
        )
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {_safe(k): v[position].numpy() for k, v in explanation.raw.items()}
    np.savez_compressed(buffer, **arrays)
    atomic_write(out / "maps" / f"{name}.npz", buffer.getvalue())
    return figure


def _write_scores(rows: list[dict], path: Path) -> bool:
    """``scores.csv``, one row per image and method; True when it has localisation scores (masks)."""
    columns = [
        "id",
        "path",
        "truth",
        "target",
        "probability",
        "method",
        *[n for n in SCORE_NAMES if any(n in r for r in rows)],
    ]
    cells = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    atomic_write(path, csv_text(columns, cells))
    return "pointing_game" in columns


def _cell(value: object) -> object:
    return "" if isinstance(value, float) and math.isnan(value) else value
