import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from attnscope import DataError
from attnscope.data.cache import load_images
from attnscope.data.decode import decode_image
from attnscope.data.manifest import BadRowsError, Manifest, check_bad_rows
from attnscope.data.sources import from_csv
from tests.data.conftest import write_image
from tests.processes import exited_pid


def test_cache_holds_exactly_what_decoding_gives_and_is_reused(lesion_folder, tmp_path, caplog):
    manifest = from_csv(lesion_folder / "marking.csv", lesion_folder / "train")
    first = load_images(manifest, 16, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert first.images.shape == (12, 16, 16, 3) and isinstance(first.images, np.memmap)
    for i in (0, 7, 11):
        np.testing.assert_array_equal(first.images[first.index[i]], decode_image(manifest.paths[i], 16))
    caplog.set_level("INFO", logger="attnscope.data.cache")
    second = load_images(manifest, 16, cache_dir=tmp_path / "cache", progress=False)
    assert "reusing the decode cache" in caplog.text
    np.testing.assert_array_equal(np.asarray(second.images), np.asarray(first.images))
    assert len(list((tmp_path / "cache").iterdir())) == 1  # no temporary folder left behind


def test_a_changed_file_makes_a_new_cache(lesion_folder, tmp_path):
    manifest = from_csv(lesion_folder / "marking.csv", lesion_folder / "train")
    before = load_images(manifest, 16, cache_dir=tmp_path / "cache", workers=1, progress=False)
    write_image(lesion_folder / "train" / "ISIC_0004.jpg", seed=99)
    os.utime(lesion_folder / "train" / "ISIC_0004.jpg", ns=(1, 1))
    after = load_images(
        from_csv(lesion_folder / "marking.csv", lesion_folder / "train"),
        16,
        cache_dir=tmp_path / "cache",
        workers=1,
        progress=False,
    )
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert not np.array_equal(after.images[4], before.images[4])
    np.testing.assert_array_equal(after.images[5], before.images[5])


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "meta"])
def test_a_corrupt_cache_is_detected_and_rebuilt(lesion_folder, tmp_path, damage, caplog):
    manifest = from_csv(lesion_folder / "marking.csv", lesion_folder / "train")
    good = np.asarray(load_images(manifest, 16, cache_dir=tmp_path / "c", workers=1, progress=False).images).copy()
    folder = next((tmp_path / "c").iterdir())
    data = folder / "images.npy"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-100])
    elif damage == "overwrite":
        raw = bytearray(data.read_bytes())
        raw[200:260] = bytes(60)
        raw[-50:] = bytes(50)
        data.write_bytes(bytes(raw))
    else:
        (folder / "meta.json").write_text("{")
    rebuilt = load_images(manifest, 16, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert "rebuilding" in caplog.text
    np.testing.assert_array_equal(np.asarray(rebuilt.images), good)


def test_rows_that_fail_to_decode_are_rejected_with_their_reason(lesion_folder, tmp_path):
    (lesion_folder / "train" / "ISIC_0002.jpg").write_bytes(b"garbage")
    path = lesion_folder / "train" / "ISIC_0005.jpg"
    path.write_bytes(path.read_bytes()[:200])
    manifest = from_csv(lesion_folder / "marking.csv", lesion_folder / "train")
    decoded = load_images(manifest, 16, cache_dir=tmp_path / "c", workers=2, progress=False)
    assert len(decoded) == 10 and decoded.index.tolist() == [0, 1, 3, 4, 6, 7, 8, 9, 10, 11]
    assert [(b.row, b.id) for b in decoded.manifest.rejected] == [(4, "ISIC_0002"), (7, "ISIC_0005")]
    with pytest.raises(BadRowsError, match="2 bad row"):
        check_bad_rows(decoded.manifest, skip_bad=False)
    again = load_images(manifest, 16, cache_dir=tmp_path / "c", progress=False)  # the failures are remembered
    assert [b.id for b in again.manifest.rejected] == ["ISIC_0002", "ISIC_0005"]
    meta = json.loads((next((tmp_path / "c").iterdir()) / "meta.json").read_text())
    assert "not an image Pillow can read" in meta["failed"]["2"]


def test_masks_are_cached_beside_the_images(lesion_folder, tmp_path):
    rows = ["image_id,target,mask"]
    for i in range(3):
        mask = np.zeros((30, 40), dtype=np.uint8)
        mask[5:25, 10:30] = 255
        from PIL import Image

        Image.fromarray(mask).save(lesion_folder / f"m{i}.png")
        rows.append(f"ISIC_{i:04d},0,m{i}.png")
    (lesion_folder / "masks.csv").write_text("\n".join(rows) + "\n")
    manifest = from_csv(
        lesion_folder / "masks.csv", lesion_folder / "train", mask_column="mask", mask_root=lesion_folder
    )
    decoded = load_images(manifest, 30, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert decoded.masks.shape == (3, 30, 30) and set(np.unique(decoded.masks)) == {0, 1}


def test_arrays_are_converted_in_memory():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 10, 10, 3), dtype=np.uint8)
    manifest = Manifest("arrays", ["a", "b", "c", "d"], np.zeros(4, dtype=np.int64), ["x"], images=rgb)
    gray = load_images(manifest, 10, "L")
    expected = (rgb.astype(np.uint32) @ np.array([299, 587, 114])) // 1000
    np.testing.assert_array_equal(gray.images[..., 0], expected)
    assert load_images(manifest, 20, "RGB").images.shape == (4, 20, 20, 3)
    with pytest.raises(DataError, match="need a cache_dir"):
        load_images(Manifest("files", ["a"], np.zeros(1, dtype=np.int64), ["x"], paths=["a.jpg"]), 8)


def test_a_full_disk_is_one_error_before_decoding_and_leaves_nothing(lesion_folder, tmp_path, monkeypatch):
    import errno

    def full(descriptor, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    manifest = from_csv(lesion_folder / "marking.csv", lesion_folder / "train")
    with pytest.raises(
        DataError, match=r"cache: no room for the decode cache of 12 images \(No space left on device\)"
    ):
        load_images(manifest, 16, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def _die(*args, **kwargs):
    os._exit(3)


def test_a_worker_that_dies_is_one_error_and_leaves_nothing(lesion_folder, tmp_path, monkeypatch):
    import attnscope.data.cache as cache

    monkeypatch.setattr(cache, "_decode_chunk", _die)  # workers are forked: they run the patched function
    manifest = from_csv(lesion_folder / "marking.csv", lesion_folder / "train")
    with pytest.raises(DataError, match="a decoding worker died .* Try again with fewer data.workers"):
        load_images(manifest, 16, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_killed_builds_leftovers_are_swept_and_a_live_ones_kept(lesion_folder, tmp_path):
    import socket

    cache_dir = tmp_path / "cache"
    host = socket.gethostname()
    dead = cache_dir / f".0123abcd.{host}~{exited_pid()}~build.tmp"
    live = cache_dir / f".4567cdef.{host}~{os.getppid()}~build.tmp"
    elsewhere = cache_dir / f".89abcdef.other-host~{exited_pid()}~build.tmp"
    for folder in (dead, live, elsewhere):
        folder.mkdir(parents=True)
        (folder / "images.npy").write_bytes(b"\0" * 1000)
    manifest = from_csv(lesion_folder / "marking.csv", lesion_folder / "train")
    load_images(manifest, 16, cache_dir=cache_dir, workers=1, progress=False)
    assert not dead.exists() and live.exists() and elsewhere.exists()
    assert len([p for p in cache_dir.iterdir() if not p.name.startswith(".")]) == 1


ORPHAN_SCRIPT = """
import multiprocessing, os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from attnscope.data.cache import die_with_parent

def block(_):
    print(os.getpid(), flush=True)
    time.sleep(600)

if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(2, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),))
    for _ in range(2):
        pool.submit(block, None)
    time.sleep(600)
"""


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_decode_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "orphans.py"
    script.write_text(ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    workers = [int(parent.stdout.readline()) for _ in range(2)]
    assert all(alive(pid) for pid in workers)
    parent.kill()  # SIGKILL: no handler of the parent's runs
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
