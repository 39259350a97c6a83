"""Using a finished run: load its model, predict probabilities, evaluate on a split or another source.

A run is read from its directory alone: ``config.yaml`` rebuilds the model,
``data.json`` gives the classes and the normalisation, ``best.json`` the
operating threshold chosen on validation, and the safetensors file the weights.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from attnscope.data.augment import AugmentConfig, BatchTransform
from attnscope.data.cache import DecodedSet, load_images
from attnscope.data.loader import BatchLoader
from attnscope.data.manifest import Manifest, check_bad_rows, write_bad_rows
from attnscope.data.module import DataModule, default_cache_dir, load_source
from attnscope.data.sources.files import IMAGE_EXTENSIONS, resolve_image
from attnscope.engine.config import RunConfig, load_config
from attnscope.engine.metrics import class_probabilities, probabilities, summarize, task_kind
from attnscope.engine.rundir import RunPaths, load_weights, read_json, write_json
from attnscope.engine.train import build_model
from attnscope.errors import CheckpointError, DataError
from attnscope.fileio import atomic_write

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """A trained run, ready to predict."""

    paths: RunPaths
    config: RunConfig
    model: nn.Module
    kind: str
    classes: list[str]
    multilabel: bool
    transform: BatchTransform
    threshold: float | list[float] | None

    @property
    def image_size(self) -> int:
        return self.config.data.image_size


def load_run(run_dir: str | Path, weights: str = "best") -> LoadedRun:
    """The model of ``run_dir`` with its ``best`` or ``last`` weights (or a weights file), in eval mode."""
    paths = RunPaths(Path(run_dir)).require()
    config = load_config(paths.config)
    summary = read_json(paths.data)
    classes, multilabel = list(summary["classes"]), bool(summary["multilabel"])
    channels = len(summary["mean"])
    model = build_model(
        replace(config, model=replace(config.model, pretrained=False)), len(classes), multilabel, channels
    )
    state = load_weights(paths.weights(weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{paths.weights(weights)} does not fit {config.model.name} as configured in {paths.config}: {error}"
        ) from error
    model.eval()
    best = read_json(paths.best) if paths.best.exists() else {}
    transform = BatchTransform(
        AugmentConfig(), tuple(summary["mean"]), tuple(summary["std"]), config.data.image_size, channels
    )
    return LoadedRun(
        paths, config, model, task_kind(len(classes), multilabel), classes, multilabel, transform, best.get("threshold")
    )


@torch.no_grad()
def predict_loader(
    run: LoadedRun, loader: BatchLoader, progress: bool = True, description: str = "predict"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, labels and manifest rows of every batch of ``loader``, in loader order."""
    probs, labels, rows = [], [], []
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        images, _ = run.transform(batch["image"])
        probs.append(probabilities(run.model(images), run.kind))
        labels.append(batch["label"])
        rows.append(batch["row"])
    if not probs:
        raise DataError("no images to predict")
    return torch.cat(probs), torch.cat(labels), torch.cat(rows)


def _check_same_split(data: DataModule, paths: RunPaths) -> None:
    """The split re-derived from the config must be the one the run trained with."""
    recorded = paths.root / "split.csv"
    if not recorded.exists():
        return
    with open(recorded, newline="", encoding="utf-8") as handle:
        then = {row["id"]: row["split"] for row in csv.DictReader(handle)}
    now = dict(zip(data.manifest.ids, (str(s) for s in data.splits), strict=True))
    if then != now:
        changed = sorted(set(then.items()) ^ set(now.items()))[:3]
        raise DataError(
            f"the data of {paths.root} changed since training (split.csv differs, e.g. {changed}); "
            "evaluate with --data on the new data instead"
        )


def evaluation_rows(
    run: LoadedRun,
    source: str | None = None,
    source_options: dict | None = None,
    split: str = "test",
    progress: bool = True,
    skip_bad: bool = False,
) -> BatchLoader:
    """A loader over the run's ``split``, or over every row of another source."""
    data_config = replace(run.config.data, progress=progress, skip_bad=skip_bad or run.config.data.skip_bad)
    if source is None:
        return split_loaders(run, [split], progress, skip_bad)[split]
    manifest = load_source(source, **(source_options or {}))
    _check_classes(manifest, run)
    decoded = load_images(
        manifest,
        data_config.image_size,
        data_config.mode,
        data_config.cache_dir or default_cache_dir(),
        data_config.workers,
        data_config.pixel_limit,
        progress,
    )
    check_bad_rows(decoded.manifest, skip_bad)
    batch = data_config.eval_batch_size or data_config.batch_size
    return BatchLoader(decoded, np.arange(len(decoded.manifest)), batch)


def split_loaders(
    run: LoadedRun, splits: Sequence[str], progress: bool = True, skip_bad: bool = False
) -> dict[str, BatchLoader]:
    """Loaders over several of the run's splits, from one reading of its data (each row once, in order)."""
    data_config = replace(run.config.data, progress=progress, skip_bad=skip_bad or run.config.data.skip_bad)
    data = DataModule(data_config).setup()
    _check_same_split(data, run.paths)
    for split in splits:
        if len(data.rows(split)) == 0:
            raise DataError(
                f"{run.paths.root} has no {split} split (data.{split}_fraction is 0); "
                "evaluate with --split val, or on other data with --data"
            )
    return {split: data.ordered_loader(split) for split in splits}


def _check_classes(manifest: Manifest, run: LoadedRun) -> None:
    if manifest.num_classes != len(run.classes) or manifest.multilabel != run.multilabel:
        raise DataError(
            f"{manifest.source} has classes {manifest.classes} but the run {run.paths.root} was "
            f"trained on {run.classes}; evaluate it on data with the same classes"
        )


def evaluate(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    source: str | None = None,
    source_options: dict | None = None,
    split: str = "test",
    weights: str = "best",
    progress: bool = True,
    skip_bad: bool = False,
    run: LoadedRun | None = None,
    loader: BatchLoader | None = None,
) -> dict:
    """Metrics of the run on its test split (or another source): ``metrics.json`` and ROC/PR/confusion plots.

    Thresholds come from validation (Youden, recorded in best.json), never from
    the data evaluated. ``run`` and ``loader`` (from :func:`load_run` and
    :func:`evaluation_rows`) spare reading them again when the caller has them.
    """
    from attnscope.engine.plots import write_evaluation_plots

    run = run or load_run(run_dir, weights)
    loader = loader or evaluation_rows(run, source, source_options, split, progress, skip_bad)
    probs, labels, rows = predict_loader(run, loader, progress, description="evaluate")
    summary = summarize(
        probs, labels, run.kind, run.classes, threshold=run.threshold, split=split if source is None else source
    )
    out = Path(out_dir) if out_dir is not None else run.paths.root / "evaluation"
    result = {
        "run": str(run.paths.root),
        "weights": weights,
        "data": source or f"{split} split",
        "kind": run.kind,
        "classes": run.classes,
        "metrics": summary,
    }
    write_json(out / "metrics.json", result)
    result["plots"] = {
        name: str(path)
        for name, path in write_evaluation_plots(probs, labels, run.kind, run.classes, summary, out).items()
    }
    if loader.decoded.manifest.rejected:
        write_bad_rows(loader.decoded.manifest.rejected, out / "bad_rows.csv")
    result["out"] = str(out)
    return result


def expand_images(images: Sequence[str | Path]) -> list[str]:
    """Image paths, with each folder replaced by the image files under it (sorted)."""
    paths: list[str] = []
    for item in images:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise DataError(f"{item}: a folder with no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(str(p) for p in found)
        else:
            paths.append(str(item))
    return paths


def image_manifest(images: Sequence[str | Path], classes: list[str]) -> Manifest:
    """A label-less manifest of image files (labels are zeros) for prediction."""
    paths = [str(Path(p)) for p in images]
    return Manifest(
        "predict",
        [Path(p).name for p in paths],
        np.zeros(len(paths), dtype=np.int64),
        classes,
        paths=paths,
        rows=list(range(1, len(paths) + 1)),
    )


def images_from_csv(csv_path: str | Path, column: str = "path", image_root: str | Path | None = None) -> list[str]:
    """Image paths listed in ``column`` of a CSV (relative to ``image_root`` or the CSV's folder)."""
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root else csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if column not in (reader.fieldnames or []):
                raise DataError(
                    f"{csv_path}: no column {column!r}; its columns are {reader.fieldnames}; "
                    "name the image column with --column"
                )
            names = [row[column] for row in reader]
    except OSError as error:
        raise DataError(f"{csv_path}: cannot be read ({error})") from error
    paths = []
    for number, name in enumerate(names, start=2):
        path, problem = resolve_image(root, name, IMAGE_EXTENSIONS)
        # an unresolved name stays as given: decoding then reports it as a bad row with its reason
        paths.append(str(path) if path is not None else str(root / name))
        if problem:
            log.debug("%s row %d: %s", csv_path, number, problem)
    return paths


def file_loader(
    run: LoadedRun, images: Sequence[str | Path], scratch: str | Path, skip_bad: bool = False, progress: bool = True
) -> BatchLoader:
    """Batches of image files (or folders of them) decoded as the run's data were, via ``scratch``."""
    if not images:
        raise DataError("no images given; pass image files or folders, or --csv FILE")
    manifest = image_manifest(expand_images(images), run.classes)
    decoded: DecodedSet = load_images(
        manifest,
        run.image_size,
        run.config.data.mode,
        scratch,
        run.config.data.workers,
        run.config.data.pixel_limit,
        progress,
    )
    check_bad_rows(decoded.manifest, skip_bad)
    batch = run.config.data.eval_batch_size or run.config.data.batch_size
    return BatchLoader(decoded, np.arange(len(decoded.manifest)), batch)


def predict(
    run_dir: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    weights: str = "best",
    skip_bad: bool = False,
    progress: bool = True,
) -> dict:
    """Per-class probabilities of ``images`` (files, or folders of them) as a CSV
    (id, path, prob_<class>..., predicted)."""
    run = load_run(run_dir, weights)
    with tempfile.TemporaryDirectory(prefix="attnscope-predict-") as scratch:
        loader = file_loader(run, images, scratch, skip_bad, progress)
        probs, _, rows = predict_loader(run, loader, progress)
    decoded = loader.decoded
    per_class = class_probabilities(probs, run.kind).numpy()
    names = predicted_names(probs, run)
    kept = decoded.manifest
    lines = [["id", "path", *[f"prob_{c}" for c in run.classes], "predicted"]]
    for position, row in enumerate(rows.tolist()):
        lines.append([kept.ids[row], kept.paths[row], *[f"{p:.6f}" for p in per_class[position]], names[position]])
    out = Path(out)
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    atomic_write(out, buffer.getvalue())
    bad = None
    if kept.rejected:
        bad = write_bad_rows(kept.rejected, out.with_name(out.stem + ".bad_rows.csv"))
    return {"out": str(out), "rows": len(rows), "skipped": len(kept.rejected), "bad_rows": str(bad) if bad else None}


def predicted_names(probs: torch.Tensor, run: LoadedRun) -> list[str]:
    """The predicted class(es) of each row, at the validation threshold (binary, multi-label) or arg-max."""
    if run.kind == "multiclass":
        return [run.classes[i] for i in probs.argmax(1).tolist()]
    if run.kind == "binary":
        threshold = 0.5 if run.threshold is None else float(run.threshold)
        return [run.classes[int(p >= threshold)] for p in probs.tolist()]
    thresholds = torch.tensor(run.threshold if isinstance(run.threshold, list) else [0.5] * len(run.classes))
    return ["|".join(c for c, on in zip(run.classes, row, strict=True) if on) for row in (probs >= thresholds).tolist()]
