"""``Run``: a trained run, opened. The one way the run-level functions hold a run.

A run is read from its directory alone: ``config.yaml`` rebuilds the model,
``data.json`` gives the classes and the normalisation, ``best.json`` the
operating threshold chosen on validation, and a safetensors file the weights.
``Run.open`` reads only those small files; the model and the decoded images are
built on first use and kept, so evaluating, explaining and indexing the same
run in one process decodes its data once and builds its model once.

Which images a run-level function reads is a :class:`DataSelection`: image
files (or folders of them), every row of another source, or one of the run's
own splits, re-derived from its config and checked against ``split.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnscope.data.augment import AugmentConfig, BatchTransform
from attnscope.data.cache import load_images
from attnscope.data.loader import BatchLoader
from attnscope.data.manifest import Manifest, check_bad_rows
from attnscope.data.module import DataConfig, DataModule, default_cache_dir
from attnscope.data.sources.files import IMAGE_EXTENSIONS, is_image_file
from attnscope.data.sources.registry import load_source
from attnscope.engine.build import build_model
from attnscope.engine.calibration import scale_logits
from attnscope.engine.config import RunConfig, load_config, read_config_file
from attnscope.engine.metrics import probabilities, task_kind
from attnscope.engine.rundir import RunPaths, final_stage, fold_runs, load_weights, read_best, read_json
from attnscope.errors import CheckpointError, ConfigError, DataError
from attnscope.fileio import file_sha256, spreadsheet_safe
from attnscope.names import SPLITS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSelection:
    """Which images to read: ``images`` (files or folders), else every row of ``source``, else ``split``.

    ``skip_bad`` leaves out rows that cannot be read (they are listed, never dropped
    silently) instead of stopping at the first. Options dataclasses of the run-level
    functions extend this one, so every function selects its images the same way.
    """

    split: str = "test"
    source: str | None = None
    source_options: Mapping[str, Any] = field(default_factory=dict)
    images: Sequence[str | Path] = ()
    skip_bad: bool = False

    def selection(self) -> DataSelection:
        """Just the selection (an options object may carry more fields)."""
        return DataSelection(**{f.name: getattr(self, f.name) for f in fields(DataSelection)})

    def check(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"split={self.split!r}: use one of {', '.join(SPLITS)}")
        if self.source_options and self.source is None:
            raise ConfigError("source options (--data-option) need a source (--data SOURCE)")
        if self.images and self.source is not None:
            raise ConfigError("give image files or a source (--data), not both")

    def describe(self) -> str:
        """``test split``, the source's name, or ``N image file(s)``: what a result says it was computed on."""
        if self.images:
            return f"{len(self.images)} image file(s)"
        return self.source if self.source is not None else f"{self.split} split"

    def folder_name(self, stem: str) -> str:
        """``stem`` for the test split (``evaluation``), ``stem-val``, or ``stem-<source>-<hash of its
        options>``: results on different data never share, and so never overwrite, a folder."""
        if self.images:
            return f"{stem}-images-{hashlib.sha256(self.key().encode()).hexdigest()[:8]}"
        if self.source is not None:
            options = json.dumps(dict(self.source_options), sort_keys=True, default=str)
            return f"{stem}-{self.source}-{hashlib.sha256(options.encode()).hexdigest()[:8]}"
        return stem if self.split == "test" else f"{stem}-{self.split}"

    def key(self) -> str:
        """A string that identifies the selection, for caching its loader."""
        values = {f.name: getattr(self, f.name) for f in fields(DataSelection)}
        values["images"] = [str(p) for p in self.images]
        return json.dumps(values, sort_keys=True, default=str)


class Run:
    """A trained run directory; build with :meth:`open`.

    ``run.model()`` (the ``weights`` chosen at opening, or ``run.model("last")``)
    and ``run.loader(selection)`` are built on first use and cached. Images given
    as files are decoded into a scratch folder that :meth:`close` removes (so does
    leaving a ``with`` block, or the run being garbage-collected).
    """

    def __init__(
        self,
        paths: RunPaths,
        config: RunConfig,
        summary: dict,
        best: dict,
        weights: str = "best",
        progress: bool = True,
    ) -> None:
        self.paths, self.config, self.summary, self.best = paths, config, summary, best
        self.weights, self.progress = weights, progress
        self.classes: list[str] = list(summary["classes"])
        self.multilabel = bool(summary["multilabel"])
        self.kind = task_kind(len(self.classes), self.multilabel)
        self._models: dict[Path, nn.Module] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._loaders: dict[str, BatchLoader] = {}
        self._data: dict[bool, DataModule] = {}
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def open(cls, path: str | Path, weights: str = "best", progress: bool = True) -> Run:
        """Open a trained run: its config, classes, validation threshold, calibration and data record.

        A staged training folder opens as its last stage; a cross-validation folder (``train --folds``) as the
        ensemble of its folds. The model and loaders are built on first use and kept.

        Args:
            path: the run directory ``train`` printed.
            weights: ``best``, ``last``, or a ``.safetensors`` file of the same model.
            progress: show progress bars while reading images.

        Returns:
            The run; use it as a context manager so that its loaders are closed.

        Raises:
            CheckpointError: ``path`` holds no run, or its weights are missing or belong to another model.
        """
        folds = fold_runs(Path(path))
        if folds:  # a cross-validation folder: its folds' ensemble
            from attnscope.engine.ensemble import FoldEnsembleRun

            return FoldEnsembleRun.open_folds(Path(path), folds, weights, progress)
        paths = RunPaths(final_stage(Path(path))).require()
        best = read_best(paths)
        run = cls(paths, _with_recorded_window(paths.config), read_json(paths.data), best, weights, progress)
        if not run.weights_path().is_file():
            raise CheckpointError(f"{run.weights_path()}: no weights file; has the run finished an epoch yet?")
        return run

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the scratch folder of decoded image files; the cached loaders over it go with it."""
        if self._scratch is not None:
            self._loaders = {k: v for k, v in self._loaders.items() if not json.loads(k)["images"]}
            self._scratch.cleanup()
            self._scratch = None

    @property
    def root(self) -> Path:
        return self.paths.root

    @property
    def name(self) -> str:
        return self.config.model.name

    @property
    def image_size(self) -> int:
        return self.config.data.image_size

    @property
    def channels(self) -> int:
        return len(self.summary["mean"])

    @cached_property
    def calibration(self) -> dict:
        """``calibration.json`` when it was fitted to the weights this run was opened with, else empty (a run
        trained before calibration existed, with ``trainer.calibration: none``, or opened with other weights)."""
        values = read_json(self.paths.calibration) if self.paths.calibration.is_file() else {}
        if values and values.get("weights_sha256") != self.weights_sha256():
            log.info("%s was fitted to other weights than %s: probabilities left uncalibrated",
                     self.paths.calibration, self.weights_path())  # fmt: skip
            return {}
        return values

    @property
    def temperature(self) -> float | list[float] | None:
        """The temperature the logits are divided by (one per finding for multi-label), or None."""
        return self.calibration.get("temperature")

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The calibrated probabilities of ``logits`` of this run's model (:mod:`attnscope.engine.calibration`)."""
        return probabilities(scale_logits(logits, self.temperature), self.kind)

    @property
    def threshold(self) -> float | list[float] | None:
        """The operating threshold chosen on validation by :attr:`threshold_policy`, recorded in ``best.json``; on
        the calibrated scale where the run is calibrated (the same decisions)."""
        return self.calibration.get("threshold", self.best.get("threshold"))

    @property
    def threshold_policy(self) -> str:
        """How the threshold was chosen on validation (``trainer.threshold``; runs from before: Youden's J)."""
        return self.config.trainer.threshold

    @property
    def binary_threshold(self) -> float:
        """A binary run's operating threshold (0.5 where validation recorded none)."""
        return float(self.threshold) if isinstance(self.threshold, (int, float)) else 0.5

    @property
    def label_thresholds(self) -> list[float]:
        """A multi-label run's threshold per label (0.5 where validation recorded none)."""
        if isinstance(self.threshold, list):
            return [float(t) for t in self.threshold]
        return [0.5] * len(self.classes)

    @cached_property
    def transform(self) -> BatchTransform:
        """Normalisation of uint8 batches as in training, without augmentation."""
        return BatchTransform(
            AugmentConfig(), tuple(self.summary["mean"]), tuple(self.summary["std"]), self.image_size, self.channels
        )

    def weights_path(self, weights: str | None = None) -> Path:
        return self.paths.weights(weights or self.weights)

    def weights_sha256(self, weights: str | None = None) -> str:
        """SHA-256 of a weights file: what an index or a served prediction names its model by. Read once per file
        as it stands (its size and time of change): the calibration, an evaluation and the server all ask."""
        path = self.weights_path(weights)
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(path)
        return self._hashes[key]

    def model(self, weights: str | None = None) -> nn.Module:
        """The model with ``weights`` (default: those chosen at opening), in eval mode; built once."""
        path = self.weights_path(weights)
        if path not in self._models:
            self._models[path] = self._load_model(path)
        return self._models[path]

    def _load_model(self, path: Path) -> nn.Module:
        model = build_model(self.config, len(self.classes), self.multilabel, self.channels, pretrained=False)
        try:
            model.load_state_dict(load_weights(path), strict=True)
        except RuntimeError as error:
            raise CheckpointError(
                f"{path} does not fit {self.name} as configured in {self.paths.config}: {error}"
            ) from error
        return model.eval()

    def loader(self, data: DataSelection | None = None) -> BatchLoader:
        """Batches of the selected images, each row once, in order; built once per selection."""
        data = (data or DataSelection()).selection()
        data.check()
        key = data.key()
        if key not in self._loaders:
            if data.images:
                self._loaders[key] = self._file_loader(data.images, data.skip_bad)
            elif data.source is not None:
                self._loaders[key] = self._source_loader(data.source, dict(data.source_options), data.skip_bad)
            else:
                self._loaders[key] = self._split_loader(data.split, data.skip_bad)
        return self._loaders[key]

    def _data_config(self, skip_bad: bool) -> DataConfig:
        return replace(self.config.data, progress=self.progress, skip_bad=skip_bad or self.config.data.skip_bad)

    def _batch_size(self) -> int:
        return self.config.data.eval_batch_size or self.config.data.batch_size

    def _split_loader(self, split: str, skip_bad: bool) -> BatchLoader:
        """One of the run's splits; every split comes from one reading of the data."""
        if skip_bad not in self._data:
            data = DataModule(self._data_config(skip_bad)).setup()
            check_same_split(data, self.paths)
            self._data[skip_bad] = data
        data = self._data[skip_bad]
        if len(data.rows(split)) == 0:
            raise DataError(
                f"{self.root} has no {split} split (data.{split}_fraction is 0); "
                "use another split (--split val), or other data (--data)"
            )
        return data.ordered_loader(split)

    def _source_loader(self, source: str, options: dict, skip_bad: bool) -> BatchLoader:
        """Every row of another source, decoded as the run's data were."""
        manifest = load_source(source, **options)
        self._check_classes(manifest)
        config = self._data_config(skip_bad)
        return self._decode(manifest, config.cache_dir or default_cache_dir(), config.skip_bad)

    def _file_loader(self, images: Sequence[str | Path], skip_bad: bool) -> BatchLoader:
        """Image files (or folders of them), decoded into this run's scratch folder."""
        if not images:
            raise DataError("no images given; pass image files or folders, or --csv FILE")
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="attnscope-images-")
        manifest = image_manifest(expand_images(images), self.classes, skip_bad)
        return self._decode(manifest, self._scratch.name, skip_bad)

    def _decode(self, manifest: Manifest, cache_dir: str | Path, skip_bad: bool) -> BatchLoader:
        data = self.config.data
        decoded = load_images(
            manifest, data.image_size, data.mode, cache_dir, data.workers, data.pixel_limit, self.progress, data.window
        )
        check_bad_rows(decoded.manifest, skip_bad)
        return BatchLoader(decoded, np.arange(len(decoded.manifest)), self._batch_size())

    def _check_classes(self, manifest: Manifest) -> None:
        if manifest.num_classes != len(self.classes) or manifest.multilabel != self.multilabel:
            raise DataError(
                f"{manifest.source} has classes {manifest.classes} but the run {self.root} was "
                f"trained on {self.classes}; use data with the same classes"
            )


def check_same_split(data: DataModule, paths: RunPaths) -> None:
    """The split re-derived from the config must be the one the run trained with."""
    recorded = paths.root / "split.csv"
    if not recorded.exists():
        return
    with open(recorded, newline="", encoding="utf-8") as handle:
        then = {row["id"]: row["split"] for row in csv.DictReader(handle)}
    # ids were written spreadsheet-safe: compare them as written
    now = dict(zip(map(spreadsheet_safe, data.manifest.ids), data.split_names(), strict=True))
    if then != now:
        changed = sorted(set(then.items()) ^ set(now.items()))[:3]
        raise DataError(
            f"the data of {paths.root} changed since training (split.csv differs, e.g. {changed}); "
            "evaluate with --data on the new data instead"
        )


def expand_images(images: Sequence[str | Path]) -> list[str]:
    """Image paths, with each folder replaced by the image files under it (sorted)."""
    paths: list[str] = []
    for item in map(Path, images):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if is_image_file(p))
            if not found:
                raise DataError(f"{item}: a folder with no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(str(p) for p in found)
        else:
            paths.append(str(item))
    return paths


def image_manifest(images: Sequence[str | Path], classes: list[str], skip_bad: bool = False) -> Manifest:
    """A label-less manifest of image files (labels are zeros) for prediction.

    Each id is the file's path relative to the folder all the files share, so that
    ``p1/scan.png`` and ``p2/scan.png`` keep apart in every output; a file given
    twice is refused (its results would be written twice under one name), or with ``skip_bad`` is a bad row
    after its first time.
    """
    paths = [str(Path(p)) for p in images]
    absolute = [os.path.abspath(p) for p in paths]
    seen: dict[str, int] = {}
    again: dict[int, str] = {}
    for number, (given, full) in enumerate(zip(paths, absolute, strict=True)):
        if full in seen:
            first = paths[seen[full]]
            if not skip_bad:
                raise DataError(f"{given}: the same image is given twice (also as {first}); give each file once")
            again[number] = f"the same image as {first} (image {seen[full] + 1}), given again"
            continue
        seen[full] = number
    common = os.path.commonpath([os.path.dirname(p) for p in absolute]) if absolute else ""
    manifest = Manifest(
        "predict",
        [os.path.relpath(p, common) for p in absolute],
        np.zeros(len(paths), dtype=np.int64),
        classes,
        paths=paths,
        rows=list(range(1, len(paths) + 1)),
    )
    return manifest.without(again) if again else manifest


def _with_recorded_window(path: Path) -> RunConfig:
    """The run's config; a run trained before ``data.window`` existed divided 16-bit values by 257, and its
    images must decode as they did in training."""
    config = load_config(path)
    if "window" not in (read_config_file(path).get("data") or {}):
        log.info("%s records no data.window: its 16-bit images decode divided by 257, as in its training", path)
        config.data = dataclasses.replace(config.data, window="divide")
    return config
