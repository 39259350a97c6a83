"""A served copy of the tiny run (with its index), and image files to send it."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from attnscope.engine.run import Run
from attnscope.retrieval.index import SimilarityIndex
from attnscope.retrieval.service import IndexOptions, build_index
from attnscope.serve import ModelService


def png_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A random RGB PNG of ``size`` (not the run's size: the server must resize it as training did)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served_run(trained_run, tmp_path_factory):
    """A copy of the tiny run as training left it (other tests add evaluations to the shared one; tests here
    add their own) and an index of its training split."""
    root = tmp_path_factory.mktemp("served") / "tiny"
    shutil.copytree(trained_run, root, ignore=shutil.ignore_patterns("evaluation*", "explain*", "report*"))
    with Run.open(root, progress=False) as run:
        build_index(run, IndexOptions(out=root.parent / "index"))
    return root


@pytest.fixture(scope="module")
def service(served_run):
    run = Run.open(served_run, progress=False)
    index_path = served_run.parent / "index"
    return ModelService(run, SimilarityIndex.load(index_path), index_path)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    paths = []
    for seed in range(3):
        path = folder / f"case{seed}.png"
        path.write_bytes(png_bytes(seed))
        paths.append(path)
    return paths
