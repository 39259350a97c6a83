"""The decode cache: every image of a manifest decoded once into a memory-mapped uint8 array.

A cache is a folder ``<cache_dir>/<key>/`` holding ``images.npy`` (N, S, S, C),
``masks.npy`` (N, S, S) when the manifest has masks, and ``meta.json``. The key
hashes the manifest's files (paths, sizes, mtimes), the size, the mode and the
pixel limit, so a changed file makes a new cache. The folder is built under a
temporary name and renamed into place, so a reader never sees half a cache;
``meta.json`` records the rows that failed to decode and a checksum of sampled
blocks, so a truncated or overwritten cache is detected and rebuilt.

Array-backed manifests (IDX, MedMNIST, generated sets) are already in memory:
they are converted in memory and not written to disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from attnscope.data.boxes import box_mask
from attnscope.data.decode import DEFAULT_PIXEL_LIMIT, MODES, decode_image, resize_and_crop, stored_size
from attnscope.data.manifest import Manifest
from attnscope.errors import DataError
from attnscope.fileio import sweep_temporaries, temporary_prefix

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CHUNK = 64
SAMPLED_BLOCKS = 64
BLOCK_BYTES = 65536


@dataclass
class DecodedSet:
    """Decoded pixels for a manifest: ``images[index[i]]`` is row ``i`` of ``manifest``.

    ``images``: uint8 (M, S, S, C), memory-mapped for file-backed manifests;
    ``masks``: uint8 (M, S, S) of 0/1, or None. ``manifest`` holds the rows that
    decoded; those that did not are in ``manifest.rejected``.
    """

    images: np.ndarray
    masks: np.ndarray | None
    index: np.ndarray
    manifest: Manifest

    def __len__(self) -> int:
        return len(self.index)


def cache_key(manifest: Manifest, size: int, mode: str, pixel_limit: int, window: str = "auto") -> str:
    text = f"v{CACHE_VERSION}|{manifest.fingerprint()}|{size}|{mode}|{pixel_limit}|{window}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def sampled_checksum(path: Path) -> int:
    """CRC32 of up to 64 evenly spaced 64 KiB blocks: cheap, and catches truncation and overwrites."""
    size = path.stat().st_size
    step = max(BLOCK_BYTES, size // SAMPLED_BLOCKS)
    crc = 0
    with open(path, "rb") as handle:
        for offset in range(0, size, step):
            handle.seek(offset)
            crc = zlib.crc32(handle.read(BLOCK_BYTES), crc)
    return crc


def _channels(mode: str) -> int:
    return 3 if mode == "RGB" else 1


def _decode_chunk(
    images_path: str,
    masks_path: str | None,
    jobs: list[tuple[int, str, MaskSource]],
    size: int,
    mode: str,
    pixel_limit: int,
    window: str = "auto",
) -> list[tuple[int, str]]:
    """Decode ``jobs`` (position, image, mask) into the open cache files; return the failures."""
    images = np.load(images_path, mmap_mode="r+")
    masks = np.load(masks_path, mmap_mode="r+") if masks_path else None
    failures = []
    for position, image_path, mask_path in jobs:
        try:
            images[position] = decode_image(image_path, size, mode, pixel_limit, window=window).reshape(size, size, -1)
            if masks is not None:
                masks[position] = _decode_mask(image_path, mask_path, size, pixel_limit)
        except DataError as error:
            failures.append((position, str(error)))
    images.flush()
    if masks is not None:
        masks.flush()
    return failures


MaskSource = str | tuple | None  # a mask file, a row's boxes, or nothing


def _decode_mask(image_path: str, mask: MaskSource, size: int, pixel_limit: int) -> np.ndarray:
    """A row's mask at the cache size: its mask file decoded, or its boxes drawn (:mod:`attnscope.data.boxes`)."""
    if mask is None:
        raise DataError("no mask for this row")
    if isinstance(mask, tuple):
        return box_mask(mask, stored_size(image_path), size)
    return decode_image(mask, size, pixel_limit=pixel_limit, mask=True)


def _valid(folder: Path, count: int, size: int, mode: str, has_masks: bool) -> dict | None:
    """The cache's metadata if the folder holds a complete, intact cache; None otherwise."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = np.load(folder / "images.npy", mmap_mode="r")
        if images.shape != (count, size, size, _channels(mode)) or meta.get("count") != count:
            return None
        if meta["images_crc"] != sampled_checksum(folder / "images.npy"):
            return None
        if has_masks:
            masks = np.load(folder / "masks.npy", mmap_mode="r")
            if masks.shape != (count, size, size) or meta["masks_crc"] != sampled_checksum(folder / "masks.npy"):
                return None
        return meta
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None


def build_cache(
    manifest: Manifest,
    folder: Path,
    size: int,
    mode: str,
    pixel_limit: int,
    workers: int,
    progress: bool,
    window: str = "auto",
) -> dict:
    """Decode every image of ``manifest`` into ``folder`` (built aside, then renamed into place).

    Whatever fails (a full disk, a killed worker, an interrupt), the half-built
    folder is removed; one left by a killed process is swept on the next build.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(folder.parent)
    temporary = folder.with_name(f"{temporary_prefix(folder.name)}build.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        meta = _build_into(temporary, manifest, (size, mode, pixel_limit, window), workers, progress)
        _commit_cache(
            temporary, folder, lambda: _valid(folder, len(manifest), size, mode, manifest.has_masks) is not None
        )
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return meta


def _build_into(
    temporary: Path, manifest: Manifest, decoding: tuple[int, str, int, str], workers: int, progress: bool
) -> dict:
    """Allocate the arrays in ``temporary``, decode into them (``decoding``: size, mode, pixel limit, window) and
    write ``meta.json``; the metadata."""
    size, mode, pixel_limit, window = decoding
    count = len(manifest)
    images_path = temporary / "images.npy"
    masks_path = temporary / "masks.npy" if manifest.has_masks else None
    try:
        _allocate(images_path, (count, size, size, _channels(mode)))
        if masks_path is not None:
            _allocate(masks_path, (count, size, size))
    except OSError as error:
        raise DataError(
            f"{temporary.parent}: no room for the decode cache of {count} images ({error.strerror or error}); "
            "free space there or point data.cache_dir (--cache-dir) at a disk with room"
        ) from error
    paths: list[str] = manifest.paths or []
    mask_paths: list[MaskSource] = list(manifest.boxes or manifest.mask_paths or [None] * count)
    decode = partial(
        _decode_chunk,
        str(images_path),
        str(masks_path) if masks_path else None,
        size=size,
        mode=mode,
        pixel_limit=pixel_limit,
        window=window,
    )
    try:
        failures = _decode_jobs(decode, [(i, paths[i], mask_paths[i]) for i in range(count)], workers, progress)
    except BrokenProcessPool as error:
        raise DataError(
            f"{manifest.source}: a decoding worker died (killed, or out of memory); nothing was cached. "
            "Try again with fewer data.workers"
        ) from error
    meta = {
        "version": CACHE_VERSION,
        "count": count,
        "size": size,
        "mode": mode,
        "window": window,
        "source": manifest.source,
        "failed": {str(position): reason for position, reason in sorted(failures)},
        "images_crc": sampled_checksum(images_path),
        "masks_crc": sampled_checksum(masks_path) if masks_path else None,
    }
    (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _allocate(path: Path, shape: tuple[int, ...]) -> None:
    """An .npy file of ``shape`` uint8 zeros with every block reserved on disk.

    A memory-mapped file is sparse: a disk that fills while workers write into it
    kills them with SIGBUS. Reserving the blocks first (posix_fallocate) turns a full
    disk into one OSError here, before any image is decoded.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    array.flush()
    del array
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise


def _decode_jobs(
    decode: Callable[[list], list[tuple[int, str]]], jobs: list, workers: int, progress: bool
) -> list[tuple[int, str]]:
    """Run ``decode`` over ``jobs`` in chunks, in this process or a pool of ``workers``; the failures."""
    chunks = [jobs[start : start + CHUNK] for start in range(0, len(jobs), CHUNK)]
    failures: list[tuple[int, str]] = []
    with tqdm(
        total=len(jobs), desc=f"decoding {len(jobs)} images", unit="img", disable=not progress, leave=False
    ) as bar:
        if workers <= 1:
            for chunk in chunks:
                failures += decode(chunk)
                bar.update(len(chunk))
            return failures
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool:
            futures = {pool.submit(decode, chunk): len(chunk) for chunk in chunks}
            for future in as_completed(futures):
                failures += future.result()
                bar.update(futures[future])
    return failures


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """A decode worker's first step: on Linux, ask the kernel to kill it when its parent dies (a SIGKILL or
    SIGTERM to ``attnscope`` would otherwise leave workers of ~200 MB each blocked forever on the pool's
    queue); if the parent is gone already, exit. Elsewhere the pool's own shutdown is all there is."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.debug("decode worker %d: prctl(PR_SET_PDEATHSIG) failed (errno %d)", os.getpid(), ctypes.get_errno())
    if os.getppid() != parent:
        os._exit(0)


def _commit_cache(temporary: Path, folder: Path, intact: Callable[[], bool]) -> None:
    """Sync the built cache and rename it into place (another process's intact cache there is kept)."""
    for path in temporary.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    if folder.exists():
        shutil.rmtree(folder)
    try:
        os.replace(temporary, folder)
    except OSError:  # another process put an intact cache there first
        shutil.rmtree(temporary, ignore_errors=True)
        if not intact():
            raise


def _array_images(manifest: Manifest, size: int, mode: str) -> np.ndarray:
    """In-memory images converted to (N, size, size, C) in ``mode``."""
    images = manifest.images
    if images is None:
        raise DataError(f"{manifest.source}: a manifest of files has no images in memory")
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 3 and mode == "L":
        weights = np.array([299, 587, 114], dtype=np.uint32)
        images = ((images.astype(np.uint32) * weights).sum(axis=-1, keepdims=True) // 1000).astype(np.uint8)
    elif images.shape[-1] == 1 and mode == "RGB":
        images = np.repeat(images, 3, axis=-1)
    if images.shape[1:3] != (size, size):
        pil_mode = "RGB" if mode == "RGB" else "L"
        images = np.stack(
            [
                np.asarray(
                    resize_and_crop(
                        Image.fromarray(image.squeeze(-1) if pil_mode == "L" else image, pil_mode),
                        size,
                        Image.Resampling.BILINEAR,
                    )
                ).reshape(size, size, -1)
                for image in images
            ]
        )
    return np.ascontiguousarray(images)


def _array_masks(manifest: Manifest, size: int) -> np.ndarray | None:
    if manifest.masks is None:
        return None
    if manifest.masks.shape[1:] == (size, size):
        return manifest.masks
    return np.stack(
        [
            np.asarray(resize_and_crop(Image.fromarray(m * 255), size, Image.Resampling.NEAREST)) > 127
            for m in manifest.masks
        ]
    ).astype(np.uint8)


def load_images(
    manifest: Manifest,
    size: int,
    mode: str = "RGB",
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    progress: bool = True,
    window: str = "auto",
) -> DecodedSet:
    """Decoded pixels of ``manifest`` at ``size`` x ``size``, from the cache when it is intact.

    Rows whose file is missing or not a regular file, and rows that fail to decode, are moved to the
    returned manifest's ``rejected``.
    """
    if mode not in MODES:
        raise DataError(f"mode={mode!r} is not supported; use one of {list(MODES)}")
    if manifest.images is not None:
        return DecodedSet(
            _array_images(manifest, size, mode), _array_masks(manifest, size), np.arange(len(manifest)), manifest
        )
    if cache_dir is None:
        raise DataError(f"{manifest.source}: image files need a cache_dir (--cache-dir) to decode into")
    manifest = manifest.without_unreadable()
    folder = Path(cache_dir) / cache_key(manifest, size, mode, pixel_limit, window)
    meta = _valid(folder, len(manifest), size, mode, manifest.has_masks)
    if meta is None:
        if folder.exists():
            log.warning("cache %s is incomplete or corrupt; rebuilding it", folder)
        workers = workers or min(os.cpu_count() or 1, 8)
        meta = build_cache(manifest, folder, size, mode, pixel_limit, workers, progress, window)
    else:
        log.info("reusing the decode cache %s", folder)
    images = np.load(folder / "images.npy", mmap_mode="r")
    masks = np.load(folder / "masks.npy", mmap_mode="r") if manifest.has_masks else None
    failed = {int(position): reason for position, reason in meta["failed"].items()}
    kept = manifest.without(failed)
    index = np.array([i for i in range(len(manifest)) if i not in failed], dtype=np.int64)
    return DecodedSet(images, masks, index, kept)
