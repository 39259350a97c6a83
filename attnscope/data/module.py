"""One object that turns a data config into loaders: source -> manifest -> cache -> splits -> loaders.

``DataModule(config).setup()`` reads the source, decodes (or reuses) the cache,
stops on bad rows unless ``skip_bad``, splits, balances the training rows,
computes normalisation statistics; then ``train_loader()``, ``val_loader()`` and
``test_loader()`` yield uint8 batches and ``transform`` augments and normalises
them on the device. ``write(run_dir)`` records the split, the bad rows and a
summary, so a run can be reproduced. The training engine wraps this object; it
depends on nothing of training.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from attnscope.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    BatchTransform,
    check_config,
    dataset_mean_std,
)
from attnscope.data.balance import class_weights, masked_subset, oversample, undersample
from attnscope.data.cache import DecodedSet, load_images
from attnscope.data.decode import DEFAULT_PIXEL_LIMIT, MODES
from attnscope.data.loader import BatchLoader
from attnscope.data.manifest import Manifest, check_bad_rows, write_bad_rows
from attnscope.data.sources.registry import SOURCES, check_source_options, load_source
from attnscope.data.splits import UNUSED_SPLIT, assign_fold_splits, assign_splits, check_splits
from attnscope.data.window import WINDOWS
from attnscope.errors import ConfigError, check_option, is_integer, is_number, refuse_unknown
from attnscope.fileio import atomic_write

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attnscope"


MAX_IMAGE_SIZE = 4096  # one 4096 x 4096 RGB image is 50 MB decoded and far more through a network


@dataclass
class DataConfig:
    """Everything that decides which pixels and labels training sees.

    Attributes:
        source: a data source of the registry: ``folder``, ``csv``, ``idx``, ``medmnist``, or a generated set.
        source_options: the source's options (its reference lists them), e.g. ``{root: /data/skin}``.
        image_size: the side in pixels every image is resized and centre-cropped to.
        mode: ``RGB`` or ``L`` (grey).
        batch_size: training images per batch.
        eval_batch_size: images per batch when evaluating; null uses ``batch_size``.
        val_fraction: the share of rows (of patients, where groups are known) in the validation split.
        test_fraction: the share in the test split (ignored where the source names its test rows).
        seed: the seed of the split and of sampling.
        folds: k-fold cross-validation: the non-test rows in this many parts (``train --folds``).
        fold: which part (1..folds) is this run's validation split.
        undersample: class -> share of its training rows kept (e.g. ``{benign: 0.3}``).
        undersample_before_split: undersample the whole set before splitting (the AttnVGG melanoma
            tutorial's order; its test split is then not the data's).
        oversample: class -> how many times its training rows are repeated.
        class_weights: weigh the loss by inverse class frequency.
        mask_fraction: the seeded share of training images that keep their masks (semi-supervised attention).
        augment: the training augmentation (``data.augment.*``).
        normalize: ``dataset`` (the training split's mean and deviation) or ``imagenet``.
        cache_dir: where decoded images are cached; null: ``$XDG_CACHE_HOME/attnscope``.
        workers: loader processes; null picks by the cores.
        skip_bad: leave out unreadable or malformed rows (listed in the run's ``bad_rows.csv``) instead of
            stopping at the first.
        pixel_limit: the most pixels a decoded image may have (a guard against decompression bombs).
        window: how DICOM and 16-bit pixels become 8 bits: ``auto``, ``lut``, ``window``, ``range``,
            ``minmax``, ``percentile`` or ``divide``.
        progress: show progress bars while decoding.
    """

    source: str = "synthetic_lesions"
    source_options: dict = field(default_factory=dict)
    image_size: int = 64
    mode: str = "RGB"
    batch_size: int = 32
    eval_batch_size: int | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    folds: int | None = None
    fold: int | None = None
    undersample: dict | None = None
    undersample_before_split: bool = False
    oversample: dict | None = None
    class_weights: bool = False
    mask_fraction: float = 1.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    normalize: str = "dataset"
    cache_dir: str | None = None
    workers: int | None = None
    skip_bad: bool = False
    pixel_limit: int = DEFAULT_PIXEL_LIMIT
    window: str = "auto"
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        """A config from plain values (a YAML file, the CLI); unknown keys are refused by name."""
        refuse_unknown("data config", values, cls.__dataclass_fields__)
        values = dict(values)
        if "augment" in values and not isinstance(values["augment"], AugmentConfig):
            refuse_unknown("augment", values["augment"], AugmentConfig.__dataclass_fields__)
            values["augment"] = AugmentConfig(**values["augment"])
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Refuse values no run could use, naming the option; the source's options are checked by name
        (nothing is read yet)."""
        SOURCES.get(self.source, option="data.source")
        check_option("data.source_options", self.source_options, lambda v: isinstance(v, dict), "must be a mapping")
        check_source_options(self.source, self.source_options)
        positive_integer = (lambda v: is_integer(v) and v >= 1, "must be an integer >= 1")
        for key in ("batch_size", "pixel_limit"):
            check_option(f"data.{key}", getattr(self, key), *positive_integer)
        side = f"must be an integer from 1 to {MAX_IMAGE_SIZE} (the side in pixels every image is resized to)"
        check_option("data.image_size", self.image_size, lambda v: is_integer(v) and 1 <= v <= MAX_IMAGE_SIZE, side)
        check_option(
            "data.eval_batch_size",
            self.eval_batch_size,
            lambda v: v is None or positive_integer[0](v),
            "must be null or an integer >= 1",
        )
        check_option(
            "data.workers",
            self.workers,
            lambda v: v is None or (is_integer(v) and v >= 0),
            "must be null or an integer >= 0",
        )
        check_option("data.mode", self.mode, lambda v: v in MODES, f"is not one of {', '.join(MODES)}")
        check_option("data.window", self.window, lambda v: v in WINDOWS, f"is not one of {', '.join(WINDOWS)}")
        check_option(
            "data.normalize", self.normalize, lambda v: v in ("dataset", "imagenet"), "is not one of dataset, imagenet"
        )
        for key in ("val_fraction", "test_fraction"):
            check_option(f"data.{key}", getattr(self, key), lambda v: is_number(v) and 0 <= v < 1, "must lie in [0, 1)")
        check_option("data.seed", self.seed, is_integer, "must be an integer")
        self._check_folds()
        check_option(
            "data.mask_fraction", self.mask_fraction, lambda v: is_number(v) and 0 <= v <= 1, "must lie in [0, 1]"
        )
        check_option(
            "data.undersample_before_split",
            self.undersample_before_split,
            lambda v: isinstance(v, bool),
            "must be true or false",
        )
        for key in ("undersample", "oversample"):
            check_option(
                f"data.{key}",
                getattr(self, key),
                lambda v: v is None or isinstance(v, dict),
                "must be null or a mapping of class names to counts",
            )
        if isinstance(self.augment, AugmentConfig):
            check_config(self.augment)

    def _check_folds(self) -> None:
        check_option(
            "data.folds",
            (self.folds, self.fold),
            lambda v: v == (None, None) or (is_integer(v[0]) and v[0] >= 2 and is_integer(v[1]) and 1 <= v[1] <= v[0]),
            "(with data.fold) must both be null, or folds >= 2 and fold in 1..folds",
        )

    def to_dict(self) -> dict:
        return asdict(self)


def split_and_balance(manifest: Manifest, config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """The split of every row and the training rows after balancing.

    ``undersample`` samples the training split (the default), or with ``undersample_before_split``
    the whole set first, as the AttnVGG melanoma tutorial does: the rows it leaves out are in no split
    (``unused`` in ``split.csv``), and the rest are split.
    """
    labels, classes = manifest.labels, manifest.classes
    before = bool(config.undersample) and config.undersample_before_split

    def split(part: Manifest) -> np.ndarray:
        if config.folds is not None and config.fold is not None:  # cross-validation: this fold's part validates
            return assign_fold_splits(part, config.folds, config.fold, config.test_fraction, config.seed)
        return assign_splits(part, config.val_fraction, config.test_fraction, config.seed)

    if before:
        kept = undersample(labels, np.arange(len(manifest)), config.undersample or {}, classes, seed=config.seed)
        splits = np.full(len(manifest), UNUSED_SPLIT, dtype=object)
        splits[kept] = split(manifest.subset(kept))
        splits = splits.astype(str)
    else:
        splits = split(manifest)
    check_splits(manifest, splits)
    train_rows = np.flatnonzero(splits == "train")
    if config.undersample and not before:
        train_rows = undersample(labels, train_rows, config.undersample, classes, seed=config.seed)
    if config.oversample:
        train_rows = oversample(labels, train_rows, config.oversample, classes)
    return splits, train_rows


class DataModule:
    """Source to loaders for one config; see the module docstring."""

    def __init__(self, config: DataConfig) -> None:
        config.check()
        self.config = config
        self.decoded: DecodedSet | None = None
        self.splits: np.ndarray | None = None
        self.train_rows: np.ndarray | None = None
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self.weights: np.ndarray | None = None
        self.mask_keep: np.ndarray | None = None

    @property
    def manifest(self) -> Manifest:
        return self._require().manifest

    @property
    def channels(self) -> int:
        return 3 if self.config.mode == "RGB" else 1

    def _require(self) -> DecodedSet:
        if self.decoded is None:
            raise ConfigError("DataModule.setup() must run before its loaders are used")
        return self.decoded

    def setup(self) -> DataModule:
        config = self.config
        manifest = load_source(config.source, **config.source_options)
        decoded = load_images(
            manifest,
            config.image_size,
            config.mode,
            config.cache_dir or default_cache_dir(),
            config.workers,
            config.pixel_limit,
            config.progress,
            config.window,
        )
        check_bad_rows(decoded.manifest, config.skip_bad)
        if decoded.manifest.rejected:
            log.warning(
                "%s: left out %d bad row(s) (data.skip_bad); the run lists them with their reasons in bad_rows.csv",
                decoded.manifest.source,
                len(decoded.manifest.rejected),
            )
        splits, train_rows = split_and_balance(decoded.manifest, config)
        labels = decoded.manifest.labels
        if config.normalize == "imagenet":
            self.mean, self.std = (
                (IMAGENET_MEAN, IMAGENET_STD)
                if self.channels == 3
                else ((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))
            )
        else:
            self.mean, self.std = dataset_mean_std(decoded.images, decoded.index[np.unique(train_rows)])
        if config.class_weights:
            self.weights = class_weights(labels, train_rows, decoded.manifest.num_classes)
        self.decoded, self.splits, self.train_rows = decoded, splits, train_rows
        if decoded.masks is not None and config.mask_fraction < 1:
            self.mask_keep = masked_subset(len(decoded.manifest), train_rows, config.mask_fraction, config.seed)
        return self

    def split_names(self) -> list[str]:
        """The split ('train', 'val', 'test', or 'unused' where sampled out before splitting) of every row."""
        self._require()
        return [str(s) for s in (self.splits if self.splits is not None else [])]

    def rows(self, split: str) -> np.ndarray:
        """Manifest rows of ``split`` (for 'train': after balancing, repeats included)."""
        self._require()
        if split == "train":
            return self.train_rows if self.train_rows is not None else np.empty(0, dtype=np.int64)
        return np.flatnonzero(self.splits == split)

    def loader(
        self, split: str, device: str = "cpu", rank: int = 0, world_size: int = 1, prefetch: bool | None = None
    ) -> BatchLoader:
        """Batches of ``split``; with ``world_size`` > 1, this process's share (training shares are even)."""
        train = split == "train"
        return BatchLoader(
            self._require(),
            self.rows(split),
            self.batch_size(split),
            shuffle=train,
            seed=self.config.seed,
            drop_last=False,
            device=device,
            prefetch=prefetch,
            rank=rank,
            world_size=world_size,
            even=train,
            mask_keep=self.mask_keep if train else None,
        )

    def batch_size(self, split: str) -> int:
        """Rows per batch of ``split``: ``batch_size`` for training, ``eval_batch_size`` (or it) otherwise."""
        return self.config.batch_size if split == "train" else (self.config.eval_batch_size or self.config.batch_size)

    def ordered_loader(self, split: str) -> BatchLoader:
        """Every row of ``split`` once, in manifest order, unshuffled: for evaluation and indexing."""
        size = self.config.eval_batch_size or self.config.batch_size
        return BatchLoader(self._require(), np.unique(self.rows(split)), size)

    def train_loader(self, device: str = "cpu") -> BatchLoader:
        return self.loader("train", device)

    def val_loader(self, device: str = "cpu") -> BatchLoader:
        return self.loader("val", device)

    def test_loader(self, device: str = "cpu") -> BatchLoader:
        return self.loader("test", device)

    def transform(self) -> BatchTransform:
        """The batch transform (augmentation for training, normalisation always) for this data."""
        return BatchTransform(
            self.config.augment,
            self.mean,
            self.std,
            self.config.image_size,
            self.channels,
            with_masks=self._require().masks is not None,
        )

    def summary(self) -> dict:
        """Classes, counts per split, statistics and the config: what a run records."""
        manifest = self.manifest
        counts = {}
        for split in ("train", "val", "test"):
            rows = self.rows(split)
            labels = manifest.labels[rows]
            per_class = (
                np.nansum(labels, axis=0)
                if manifest.multilabel
                else np.bincount(labels, minlength=manifest.num_classes)
            )
            counts[split] = {"rows": len(rows), "per_class": [int(c) for c in per_class]}
        return {
            "source": manifest.source,
            "classes": manifest.classes,
            "multilabel": manifest.multilabel,
            "rows": len(manifest),
            "rejected": len(manifest.rejected),
            "counts": counts,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_weights": None if self.weights is None else [float(w) for w in self.weights],
            "train_rows_with_masks": None if self.mask_keep is None else int(self.mask_keep.sum()),
            "config": self.config.to_dict(),
        }

    def write(self, run_dir: str | Path) -> dict[str, Path]:
        """Write ``split.csv``, ``data.json`` and, when rows were left out, ``bad_rows.csv``."""
        run_dir = Path(run_dir)
        manifest = self.manifest
        with_splits = replace(manifest, splits=list[str | None](self.split_names()))
        written = {
            "split": with_splits.write_csv(run_dir / "split.csv"),
            "data": atomic_write(run_dir / "data.json", json.dumps(self.summary(), indent=2, default=str)),
        }
        if manifest.rejected:
            written["bad_rows"] = write_bad_rows(manifest.rejected, run_dir / "bad_rows.csv")
        return written
