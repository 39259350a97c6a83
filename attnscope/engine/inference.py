"""Using a finished run: predict probabilities, evaluate on a split or another source.

Both take a :class:`~attnscope.engine.run.Run` and one options dataclass, and
return a dataclass. Thresholds always come from validation (recorded in
``best.json``), never from the data evaluated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from attnscope.data.loader import BatchLoader
from attnscope.data.manifest import BadRow, write_bad_rows
from attnscope.data.sources.files import IMAGE_EXTENSIONS, read_csv_rows, resolve_image
from attnscope.engine.calibration import calibration_scores
from attnscope.engine.intervals import BootstrapOptions, metric_intervals
from attnscope.engine.metrics import class_probabilities, probabilities, summarize
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.rundir import write_json
from attnscope.engine.tta import averaged, flip_views
from attnscope.engine.uncertainty import predict_with_uncertainty, spread_of_decision
from attnscope.errors import ConfigError, DataError
from attnscope.fileio import atomic_write, csv_text, sweep_temporaries
from attnscope.outputs import (
    BAD_ROWS,
    EVALUATION,
    PREDICTIONS,
    check_output_file,
    check_output_folder,
    prepare_output_folder,
)

log = logging.getLogger(__name__)


def predict_loader(
    run: Run,
    loader: BatchLoader,
    description: str = "predict",
    views: tuple[str, ...] = ("none",),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Calibrated probabilities (averaged over ``views``, see :mod:`~attnscope.engine.tta`), labels and
    manifest rows of every batch of ``loader``, in loader order."""
    probs, _, labels, rows = predict_with_raw(run, loader, description, views)
    return probs, labels, rows


@torch.no_grad()
def predict_with_raw(
    run: Run, loader: BatchLoader, description: str = "predict", views: tuple[str, ...] = ("none",)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`predict_loader` with the uncalibrated probabilities too (calibrated, raw, labels, rows): what the
    run's calibration changed, from one forward pass."""
    model = run.model()

    def both(images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = model(images)
        return {"calibrated": run.probabilities(logits), "raw": probabilities(logits, run.kind)}

    calibrated, raw, labels, rows = [], [], [], []
    for batch in tqdm(loader, desc=description, disable=not run.progress, leave=False):
        images, _ = run.transform(batch["image"])
        outputs = averaged(both, images, views)
        calibrated.append(outputs["calibrated"])
        raw.append(outputs["raw"])
        labels.append(batch["label"])
        rows.append(batch["row"])
    if not calibrated:
        raise DataError("no images to predict")
    return torch.cat(calibrated), torch.cat(raw), torch.cat(labels), torch.cat(rows)


BRANCH_METRICS = ("auc", "ap", "auc_per_class")
BRANCHES = ("global", "local", "fusion")


@torch.no_grad()
def predict_branches(
    run: Run, loader: BatchLoader, views: tuple[str, ...] = ("none",)
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """AG-CNN: probabilities of the global, local and fusion branches of every batch (averaged
    over ``views``; the trained branch's calibrated, and also as ``raw``), the labels and the manifest rows."""
    model: Any = run.model()  # an AGCNN
    trained = str(model.stage)  # the branch the run's calibration was fitted to

    def branch_probabilities(images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = model.forward_branches(images)
        found = {
            name: run.probabilities(outputs[name]) if name == trained else probabilities(outputs[name], run.kind)
            for name in BRANCHES
        }
        return found | {"raw": probabilities(outputs[trained], run.kind)}

    probs: dict[str, list[torch.Tensor]] = {name: [] for name in (*BRANCHES, "raw")}
    labels, rows = [], []
    for batch in tqdm(loader, desc="evaluate", disable=not run.progress, leave=False):
        images, _ = run.transform(batch["image"])
        outputs = averaged(branch_probabilities, images, views)
        for name, values in probs.items():
            values.append(outputs[name])
        labels.append(batch["label"])
        rows.append(batch["row"])
    if not labels:
        raise DataError("no images to evaluate")
    return {name: torch.cat(values) for name, values in probs.items()}, torch.cat(labels), torch.cat(rows)


@dataclass(frozen=True)
class EvaluateOptions(DataSelection):
    """What to evaluate on (default: the run's test split) and where the results go.

    The default folder is ``RUN/evaluation`` for the test split and one of its own for
    any other data (``RUN/evaluation-val``, ``RUN/evaluation-<source>-<hash>``), so an
    evaluation on new data never overwrites the test split's. ``tta`` averages the
    probabilities over the flips the run was trained with (:mod:`~attnscope.engine.tta`),
    with the threshold chosen again on validation under the same flips; its folder ends
    in ``-tta``.
    """

    out: str | Path | None = None
    tta: bool = False
    bootstrap: int = 1000  # resamples of the confidence intervals (0: none)
    confidence: float = 0.95
    bootstrap_method: str = "percentile"  # or BCa
    seed: int = 0
    by: tuple[str, ...] = ()  # subgroups: columns of the source CSV, or dicom:Keyword tags
    refer_sensitivity: float | None = 0.95  # the referral band's target on validation (None: no band)

    def bootstrap_options(self) -> BootstrapOptions:
        return BootstrapOptions(self.bootstrap, self.confidence, self.bootstrap_method, self.seed)


@dataclass
class Evaluation:
    """Metrics of a run on some data, and where they were written (``metrics.json`` and the plots)."""

    run: Path
    weights: str
    data: str
    kind: str
    classes: list[str]
    metrics: dict
    out: Path
    plots: dict[str, Path] = field(default_factory=dict)


def evaluate(run: Run, options: EvaluateOptions | None = None) -> Evaluation:
    """Metrics of the run on its test split (or another source), with their intervals.

    Thresholds and calibration come from the validation split, never from the images evaluated.

    Args:
        run: the opened run.
        options: which images (default: the test split), the bootstrap, subgroups, the referral band, where
            to write (default ``RUN/evaluation``: ``metrics.json`` and ROC, PR and confusion plots).

    Returns:
        The metrics (AUC, sensitivity and specificity at the threshold, ...), their intervals and the files.

    Raises:
        ConfigError: options no evaluation could use, named.
        DataError: unreadable images (with ``skip_bad`` they are listed and left out instead).
    """
    from attnscope.engine.plots import write_evaluation_plots

    options = options or EvaluateOptions()
    if options.images:
        raise ConfigError(
            "evaluation needs labels: evaluate on a split or a labelled source (--data), or use predict for image files"
        )
    stem = "evaluation-tta" if options.tta else "evaluation"
    out = check_output_folder(
        options.out if options.out is not None else run.root / options.folder_name(stem), EVALUATION
    )
    loader = run.loader(options)
    data = options.describe()
    views, threshold = _views_and_threshold(run, options.tta)
    found = _evaluated_probabilities(run, loader, data, views)
    probs, labels = found.probs, found.labels
    metrics = _metrics(run, found, loader.decoded.manifest.groups, threshold, options, data)
    if options.by:
        metrics["subgroups"] = _subgroups(run, loader, found, threshold, options)
    if options.refer_sensitivity is not None and run.kind != "multiclass":
        metrics["referral"] = _referral(run, found, threshold, views, options.refer_sensitivity)
    if found.branches:
        metrics["branches"] = found.branches
    if options.tta:
        metrics["tta"] = list(views)
    prepare_output_folder(out, EVALUATION)
    sweep_temporaries(out)
    result = Evaluation(run.root, run.weights, data, run.kind, run.classes, metrics, out)
    write_json(
        out / "metrics.json",
        {
            "run": str(result.run),
            "weights": result.weights,
            "weights_sha256": run.weights_sha256(),  # so that these numbers are never shown for other weights
            "data": data,
            "kind": result.kind,
            "classes": result.classes,
            "metrics": metrics,
        },
    )
    result.plots = write_evaluation_plots(probs, labels, run.kind, run.classes, metrics, out)
    if loader.decoded.manifest.rejected:
        write_bad_rows(loader.decoded.manifest.rejected, out / "bad_rows.csv")
    return result


@dataclass
class _Evaluated:
    """What :func:`evaluate` computes metrics from: calibrated and uncalibrated probabilities, labels, the manifest
    rows they belong to, and AG-CNN's branches."""

    probs: torch.Tensor
    raw: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor
    branches: dict[str, dict]


def _metrics(
    run: Run,
    found: _Evaluated,
    groups: list[str | None] | None,
    threshold: float | list[float] | None,
    options: EvaluateOptions,
    data: str,
) -> dict:
    """The metrics of an evaluation: the summary at the validation threshold, the calibration (before and after
    the run's temperature) and the confidence intervals, resampling patients where the rows have groups."""
    metrics = summarize(found.probs, found.labels, run.kind, run.classes, threshold=threshold, split=data)
    metrics["threshold_policy"] = run.threshold_policy
    metrics["calibration"] = calibration_scores(found.probs, found.labels, run.kind)
    if run.temperature is not None:
        metrics["calibration_uncalibrated"] = calibration_scores(found.raw, found.labels, run.kind)
        metrics["temperature"] = run.temperature
    metrics["intervals"] = metric_intervals(
        found.probs.numpy(), found.labels.numpy(), run.kind, run.classes, threshold,
        [groups[int(r)] for r in found.rows] if groups else None, options.bootstrap_options(),
    )  # fmt: skip
    return metrics


def _subgroups(
    run: Run, loader: BatchLoader, found: _Evaluated, threshold: float | list[float] | None, options: EvaluateOptions
) -> dict[str, dict]:
    """Each ``options.by``'s subgroups with their metrics (:mod:`attnscope.engine.subgroups`)."""
    from attnscope.engine.subgroups import subgroup_metrics, subgroup_values

    manifest, rows = loader.decoded.manifest, [int(r) for r in found.rows]
    groups = [manifest.groups[r] for r in rows] if manifest.groups else None
    return {
        by: subgroup_metrics(
            found.probs.numpy(),
            found.labels.numpy(),
            run.kind,
            run.classes,
            threshold,
            subgroup_values(manifest, rows, by),
            groups,
            options.bootstrap_options(),
        )
        for by in options.by
    }


def _referral(
    run: Run, found: _Evaluated, threshold: float | list[float] | None, views: tuple[str, ...], sensitivity: float
) -> dict:
    """The referral band chosen on the validation split, applied to ``found`` (:mod:`attnscope.engine.referral`)."""
    from attnscope.engine.referral import referral_metrics

    names = [run.classes[1]] if run.kind == "binary" else list(run.classes)
    return {
        "target_sensitivity": sensitivity,
        "findings": referral_metrics(
            _validation_arrays(run, views), (found.probs.numpy(), found.labels.numpy()), names,
            _limits(run, threshold), sensitivity,
        ),
    }  # fmt: skip


def _limits(run: Run, threshold: float | list[float] | None) -> list[float]:
    """The operating threshold of each finding (one for a binary run)."""
    if run.kind == "binary":
        return [float(threshold) if isinstance(threshold, (int, float)) else run.binary_threshold]
    return list(threshold) if isinstance(threshold, list) else run.label_thresholds


def _validation_arrays(run: Run, views: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The validation split's probabilities and labels, as the referral band is chosen on them."""
    validation = _evaluated_probabilities(run, run.loader(DataSelection(split="val")), "val split", views)
    return validation.probs.numpy(), validation.labels.numpy()


def _evaluated_probabilities(run: Run, loader: BatchLoader, data: str, views: tuple[str, ...]) -> _Evaluated:
    """Calibrated and uncalibrated probabilities and labels of ``loader``; for AG-CNN also every branch's AUC
    beside the trained one's."""
    model: Any = run.model()
    if not hasattr(model, "forward_branches"):
        probs, raw, labels, rows = predict_with_raw(run, loader, "evaluate", views)
        return _Evaluated(probs, raw, labels, rows, {})
    branch_probs, labels, rows = predict_branches(run, loader, views)
    branches = {}
    for name in BRANCHES:
        summary = summarize(branch_probs[name], labels, run.kind, run.classes, split=f"{data}, {name} branch")
        branches[name] = {key: summary[key] for key in BRANCH_METRICS if key in summary}
    return _Evaluated(branch_probs[str(model.stage)], branch_probs["raw"], labels, rows, branches)


def _views_and_threshold(run: Run, tta: bool) -> tuple[tuple[str, ...], float | list[float] | None]:
    """The views to average and the operating threshold that goes with them: the image alone and
    the recorded threshold, or with ``tta`` the trained flips and a threshold chosen under them."""
    if not tta:
        return ("none",), run.threshold
    views = flip_views(run.config.data.augment)
    return views, _tta_threshold(run, views)


def _tta_threshold(run: Run, views: tuple[str, ...]) -> float | list[float] | None:
    """The operating threshold chosen as training chose it (Youden's J on the validation split),
    on probabilities averaged over ``views``: the recorded one fits single-view probabilities."""
    if run.kind == "multiclass" or run.threshold is None:
        return run.threshold
    found = _evaluated_probabilities(run, run.loader(DataSelection(split="val")), "val split", views)
    return summarize(
        found.probs,
        found.labels,
        run.kind,
        run.classes,
        split="val split (test-time augmentation)",
        policy=run.threshold_policy,
    ).get("threshold")


@dataclass(frozen=True)
class PredictOptions:
    """Image files (or folders of them) to predict, and the CSV to write (default ``RUN/predictions.csv``)."""

    images: tuple[str | Path, ...] = ()
    out: str | Path | None = None
    skip_bad: bool = False
    tta: bool = False  # as EvaluateOptions.tta; the default CSV is then RUN/predictions-tta.csv
    force: bool = False  # replace a regular file at ``out`` that attnscope did not write
    rejected: tuple[BadRow, ...] = ()  # rows of an image list refused before reading (images_from_csv)
    uncertainty: str | None = None  # tta or mc_dropout: a column of each image's spread (engine.uncertainty)
    refer_sensitivity: float | None = None  # a column saying which images the validation band refers


@dataclass
class Predictions:
    """Where the predictions went, how many rows, and the images left out (``--skip-bad``)."""

    out: Path
    rows: int
    skipped: int
    bad_rows: Path | None


def predict(run: Run, options: PredictOptions) -> Predictions:
    """Calibrated per-class probabilities and decisions of new images, as a CSV.

    Args:
        run: the opened run.
        options: the images (files, folders or a CSV), test-time augmentation, per-image uncertainty, the
            referral band and where to write.

    Returns:
        The rows written (id, path, ``prob_<class>``..., predicted) and the CSV's path.

    Raises:
        DataError: an unreadable image (with ``skip_bad`` it is listed and left out instead).
    """
    default = run.root / ("predictions-tta.csv" if options.tta else "predictions.csv")
    out = check_output_file(options.out if options.out is not None else default, PREDICTIONS, options.force)
    bad_rows_out = check_output_file(out.with_name(out.stem + ".bad_rows.csv"), BAD_ROWS, options.force)
    if options.tta and options.uncertainty == "mc_dropout":
        raise ConfigError("--tta and --uncertainty mc_dropout average different things: choose one")
    loader = run.loader(DataSelection(images=tuple(options.images), skip_bad=options.skip_bad))
    # the spread over the flips comes with their average, decided at the threshold chosen under them
    views, threshold = _views_and_threshold(run, options.tta or options.uncertainty == "tta")
    if options.uncertainty:
        probs, spread, rows = predict_with_uncertainty(run, loader, options.uncertainty)
    else:
        probs, _, rows = predict_loader(run, loader, views=views)
    kept = loader.decoded.manifest
    per_class = class_probabilities(probs, run.kind).numpy()
    names = predicted_names(probs, run, threshold)
    header, extra = ["id", "path", *[f"prob_{c}" for c in run.classes], "predicted"], []
    if options.uncertainty:
        header.append("uncertainty")
        extra.append([_joined(v) for v in spread_of_decision(probs, spread, run.kind).reshape(len(rows), -1).tolist()])
    if options.refer_sensitivity is not None:
        header.append("refer")
        extra.append(_referred(run, probs, threshold, views, options.refer_sensitivity))
    lines = []
    for position, row in enumerate(rows.tolist()):
        path = kept.paths[row] if kept.paths else ""
        cells = [kept.ids[row], path, *[f"{p:.6f}" for p in per_class[position]], names[position]]
        lines.append(cells + [column[position] for column in extra])
    sweep_temporaries(out.parent)
    atomic_write(out, csv_text(header, lines))
    rejected = [*options.rejected, *kept.rejected]
    bad = write_bad_rows(rejected, bad_rows_out) if rejected else None
    return Predictions(out, len(rows), len(rejected), bad)


def _joined(values: list[float]) -> str:
    return "|".join(f"{v:.4f}" for v in values)


def _referred(
    run: Run, probs: torch.Tensor, threshold: float | list[float] | None, views: tuple[str, ...], sensitivity: float
) -> list[str]:
    """``yes``/``no`` per image (per finding, joined by ``|``): inside the referral band chosen on validation."""
    from attnscope.engine.referral import choose_bands, margins

    if run.kind == "multiclass":
        raise ConfigError("a referral band needs a threshold: binary and multi-label runs only")
    limits = _limits(run, threshold)
    bands = choose_bands(_validation_arrays(run, views), limits, sensitivity)
    columns = probs.reshape(len(probs), -1).numpy()
    flags = [
        margins(columns[:, c], limit) < band["margin"]
        for c, (limit, band) in enumerate(zip(limits, bands, strict=True))
    ]
    return ["|".join("yes" if flag[i] else "no" for flag in flags) for i in range(len(columns))]


def decisions(probs: torch.Tensor, run: Run, threshold: float | list[float] | None = None) -> torch.Tensor:
    """Each row's decision as the run makes it: (N,) class indices, arg-max (multi-class) or at the
    validation threshold (binary); (N, K) 0/1 per label at each label's threshold (multi-label).
    ``threshold`` replaces the recorded one (test-time augmentation chooses its own)."""
    if run.kind == "multiclass":
        return probs.argmax(1)
    if run.kind == "binary":
        return (probs >= (float(threshold) if isinstance(threshold, (int, float)) else run.binary_threshold)).long()
    return (probs >= torch.tensor(threshold if isinstance(threshold, list) else run.label_thresholds)).long()


def predicted_names(probs: torch.Tensor, run: Run, threshold: float | list[float] | None = None) -> list[str]:
    """The predicted class(es) of each row (:func:`decisions`), by name; labels joined by ``|``."""
    decided = decisions(probs, run, threshold).tolist()
    if run.kind != "multilabel":
        return [run.classes[i] for i in decided]
    return ["|".join(c for c, on in zip(run.classes, row, strict=True) if on) for row in decided]


def images_from_csv(
    csv_path: str | Path, column: str = "path", image_root: str | Path | None = None, skip_bad: bool = False
) -> tuple[list[str], list[BadRow]]:
    """Image paths listed in ``column`` of a CSV, each under ``image_root`` (default: the CSV's folder), and
    the rows left out.

    A name that leads outside the root (``../``, an absolute path, a link pointing out)
    is refused with its row: a CSV must not reach files its root does not hold. With
    ``skip_bad`` such rows are left out, never read, and returned as bad rows.
    """
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root else csv_path.parent
    rows = read_csv_rows(csv_path, {"--column": column}, hint="; name the image column with --column")
    paths, outside, rejected = [], [], []
    for line, row in rows:
        name = (row[column] or "").strip()
        path, problem, leads_out = resolve_image(root, name, IMAGE_EXTENSIONS)
        if leads_out:
            outside.append(f"line {line}: {problem}")
            rejected.append(BadRow(str(csv_path), line, name, str(problem)))
            continue
        # an unresolved name stays as given: decoding then reports it as a bad row with its reason
        paths.append(str(path) if path is not None else str(root / name))
    if outside and not skip_bad:
        listed = "\n  ".join(outside[:20])
        raise DataError(
            f"{csv_path}: {len(outside)} row(s) name files outside the image root {root} "
            f"(pass --image-root to widen it, or fix the rows):\n  {listed}"
        )
    return paths, rejected
