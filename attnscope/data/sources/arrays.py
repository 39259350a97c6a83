"""Array-backed sources: MNIST-format IDX files and MedMNIST ``.npz`` files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from attnscope.data.manifest import Manifest
from attnscope.errors import DataError
from attnscope.names import SPLITS

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IDX_PREFIXES = {"train": "train", "test": "t10k"}
IDX_DTYPES: dict[int, type | str] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into an array of its shape."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"{path}: broken gzip data ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (its first bytes are {raw[:4].hex()})")
    dims = raw[3]
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: holds {len(raw) - header} data bytes, its header promises {expected} "
            f"for shape {shape}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(directory: Path, prefix: str, kind: str) -> Path:
    for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte", f"{prefix}-{kind}.idx"):
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                return candidate
    raise DataError(f"{directory}: no {prefix}-{kind}-idx*-ubyte[.gz] file; expected the MNIST file names")


def from_idx(directory: str | Path | None = None, split: str = "train", classes: list[str] | None = None) -> Manifest:
    """A manifest from MNIST-format IDX files in ``directory`` (``split``: train, test or all).

    Without a directory, Fashion-MNIST from Debian's package ``dataset-fashion-mnist``.
    """
    if directory is None:
        if not FASHION_MNIST_DIR.is_dir():
            raise DataError(
                f"Fashion-MNIST is not at {FASHION_MNIST_DIR}: install Debian's dataset-fashion-mnist "
                "(apt-get install dataset-fashion-mnist) or pass the folder of your IDX files"
            )
        directory = FASHION_MNIST_DIR
        classes = classes or FASHION_MNIST_CLASSES
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such folder of IDX files")
    if split not in (*IDX_PREFIXES, "all"):
        raise DataError(f"split={split!r}: IDX files have 'train' and 'test' (or 'all')")
    parts = ["train", "test"] if split == "all" else [split]
    images, labels, splits = [], [], []
    for part in parts:
        prefix = IDX_PREFIXES[part]
        part_images = read_idx(_idx_file(directory, prefix, "images"))
        part_labels = read_idx(_idx_file(directory, prefix, "labels")).astype(np.int64)
        if part_images.ndim != 3 or part_labels.shape != (len(part_images),):
            raise DataError(
                f"{directory}: {prefix} images {part_images.shape} and labels {part_labels.shape} do not pair up"
            )
        images.append(part_images.astype(np.uint8))
        labels.append(part_labels)
        splits += ["test" if part == "test" else None] * len(part_images)
    label_array = np.concatenate(labels)
    names = classes or [str(i) for i in range(int(label_array.max()) + 1)]
    if label_array.min() < 0 or label_array.max() >= len(names):
        raise DataError(
            f"{directory}: labels range {label_array.min()}..{label_array.max()}, outside the {len(names)} classes"
        )
    source = f"{directory} ({split})"
    return Manifest(
        source,
        [f"{split}#{i}" for i in range(len(label_array))],
        label_array,
        list(names),
        images=np.concatenate(images),
        splits=list[str | None](splits) if split == "all" else None,
    )


def from_medmnist(path: str | Path, split: str = "train", classes: list[str] | None = None) -> Manifest:
    """A manifest from a MedMNIST ``.npz`` (keys ``train_images``, ``train_labels``, ``val_*``, ``test_*``).

    ``split``: train, val, test, or all (then each row keeps its split). Labels of
    shape (N, K > 1) are multi-label (ChestMNIST's 14 findings).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such MedMNIST file")
    if split not in (*SPLITS, "all"):
        raise DataError(f"split={split!r}: MedMNIST files have {list(SPLITS)} (or 'all')")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from error
    with archive:
        parts = list(SPLITS) if split == "all" else [split]
        missing = [f"{p}_{k}" for p in parts for k in ("images", "labels") if f"{p}_{k}" not in archive.files]
        if missing:
            raise DataError(f"{path}: no {missing} array; the file holds {archive.files}")
        images = [archive[f"{p}_images"] for p in parts]
        labels = [archive[f"{p}_labels"] for p in parts]
    multilabel = labels[0].ndim == 2 and labels[0].shape[1] > 1
    label_array = np.concatenate(labels)
    label_array = label_array.astype(np.float32) if multilabel else label_array.reshape(-1).astype(np.int64)
    count = label_array.shape[1] if multilabel else int(label_array.max()) + 1
    names = classes or [str(i) for i in range(count)]
    splits = [p for p, part in zip(parts, images, strict=True) for _ in range(len(part))]
    return Manifest(
        f"{path} ({split})",
        [f"{s}#{i}" for i, s in enumerate(splits)],
        label_array,
        names,
        images=np.concatenate(images).astype(np.uint8),
        splits=list[str | None](splits) if split == "all" else None,
    )
