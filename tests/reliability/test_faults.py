"""The fault suite: a full disk (RLIMIT_FSIZE), SIGKILL at seeded points of training, caching and
index writing. Invariant: one clear line or a consistent result, nothing half-written left behind
after the next start, and nothing outside the tool's own outputs changed."""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnscope.engine.rundir import RunPaths, load_weights, read_best
from tests.runs import TINY

ENVIRONMENT = dict(os.environ, OMP_NUM_THREADS="1")


def image_folder(root: Path, per_class: int = 40, size: int = 48) -> Path:
    for label in ("benign", "malignant"):
        for number in range(per_class):
            path = root / label / f"{number}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng((number, label == "benign"))
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return root


def attnscope(*args: str, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if file_limit is not None:  # a file may grow to file_limit bytes: a full disk for every write
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    command = [sys.executable, "-m", "attnscope", *args]
    return subprocess.run(command, env=ENVIRONMENT, capture_output=True, text=True, timeout=300, preexec_fn=limit)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("file_limit", "message"),
    [
        (100_000, "no room for the decode cache of 80 images (File too large)"),  # while caching
        (350_000, "File too large: the disk (or a size limit) is full; free space and run again"),  # the weights
    ],
)
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, file_limit, message):
    data = image_folder(tmp_path / "data")
    before = sorted(data.rglob("*"))
    train = ["train", "--model", "attn_vgg_tiny", "--data", "folder", "--data-option", f"root={data}"]
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    flags = [
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--no-progress",
        "--run-dir",
        str(run_dir),
        "--cache-dir",
        str(cache),
    ]
    result = attnscope(*train, *flags, file_limit=file_limit)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("attnscope: error:") and message in last
    assert temporaries(tmp_path) == [] and sorted(data.rglob("*")) == before


def kill_at(command: list[str], ready: Callable[[], bool], delay: float) -> int:
    """Start ``command``, wait until ``ready()``, then SIGKILL it ``delay`` seconds later; its return code."""
    process = subprocess.Popen(command, env=ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    return process.wait(timeout=60)


@pytest.mark.e2e
def test_training_killed_at_a_seeded_point_resumes_to_a_consistent_run(tmp_path):
    run_dir = tmp_path / "run"
    train = ["train", *TINY, "--epochs", "3", "--run-dir", str(run_dir)]
    lock = run_dir / ".lock"
    kill_at([sys.executable, "-m", "attnscope", *train], lock.exists, random.Random(13).uniform(1.0, 6.0))
    # killed before config.yaml was written, the same command starts over in the folder; else --resume
    finish = attnscope("train", "--resume", str(run_dir)) if (run_dir / "config.yaml").exists() else attnscope(*train)
    assert finish.returncode == 0, finish.stderr[-2000:]
    paths = RunPaths(run_dir)
    best = read_best(paths)
    assert json.loads(paths.best.read_text()) == best  # the readable copy agrees with the weights' record
    assert 0 <= best["epoch"] < 3 and isinstance(best["threshold"], float)
    assert load_weights(paths.best_weights) and load_weights(paths.last_weights)
    assert [int(float(line.split(",")[0])) for line in paths.metrics.read_text().splitlines()[1:]] == [0, 1, 2]
    assert temporaries(run_dir) == [] and not (run_dir / ".lock").exists()


@pytest.mark.e2e
def test_a_cache_build_killed_midway_is_swept_and_rebuilt_whole(tmp_path):
    from attnscope.data.cache import load_images
    from attnscope.data.decode import decode_image
    from attnscope.data.sources import from_folder

    data = image_folder(tmp_path / "data", per_class=150, size=256)  # about 2 s to decode
    cache = tmp_path / "cache"
    script = (
        "import sys; from attnscope.data.cache import load_images; from attnscope.data.sources import from_folder;"
        f"load_images(from_folder({str(data)!r}), 32, cache_dir={str(cache)!r}, workers=1, progress=False)"
    )
    process = subprocess.Popen([sys.executable, "-c", script], env=ENVIRONMENT)
    while process.poll() is None and not [p for p in cache.glob(".*build.tmp") if (p / "images.npy").exists()]:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the build finished before it could be killed"
    assert len(list(cache.glob(".*build.tmp"))) == 1  # what a killed build leaves
    manifest = from_folder(data)
    decoded = load_images(manifest, 32, cache_dir=cache, workers=1, progress=False)
    assert [p.name for p in cache.iterdir()] == [next(p.name for p in cache.iterdir())]  # the cache alone
    for row in (0, 149, 299):
        np.testing.assert_array_equal(decoded.images[decoded.index[row]], decode_image(manifest.paths[row], 32))


@pytest.mark.e2e
def test_an_index_write_killed_at_seeded_points_leaves_the_old_index_or_the_new(trained_run, tmp_path):
    from attnscope.retrieval import SimilarityIndex

    index = tmp_path / "gallery"
    assert attnscope("index", str(trained_run), "--out", str(index), "--no-progress").returncode == 0
    complete = sorted(p.name for p in index.iterdir())
    rng = random.Random(5)
    command = [sys.executable, "-m", "attnscope", "index", str(trained_run), "--out", str(index), "--force"]
    staging = lambda: bool(list(tmp_path.glob(".gallery.*.tmp")))  # noqa: E731 - the new index being written
    for _ in range(2):  # killed while the new index is written: at once, then a seeded moment later
        kill_at([*command, "--no-progress"], staging, rng.uniform(0.0, 0.5))
        assert sorted(p.name for p in index.iterdir()) == complete  # the old one, whole, or the new one
        assert len(SimilarityIndex.load(index)) > 0
    assert attnscope(*command[3:], "--no-progress").returncode == 0
    assert temporaries(tmp_path) == [] and not list(tmp_path.glob(".gallery.*"))
