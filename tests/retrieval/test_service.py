"""Indexing a trained run and searching it with image files, end to end in the library."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from attnscope.engine.run import DataSelection, Run
from attnscope.errors import RetrievalError
from attnscope.retrieval import SimilarityIndex, build_index, result_rows, search_images
from attnscope.retrieval.page import write_search_page
from attnscope.retrieval.service import IndexOptions, SearchOptions, loader_images


def split_rows(run_dir, split):
    with open(run_dir / "split.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["split"] == split]


def write_queries(run_dir, folder, count=3):
    """PNG files of the first training images, decoded at the run's size (so they embed identically)."""
    run = Run.open(run_dir, progress=False)
    loader = run.loader(DataSelection(split="train"))
    positions = np.arange(count)
    folder.mkdir()
    ids = []
    for position, image in zip(positions, loader_images(loader, positions), strict=True):
        name = loader.decoded.manifest.ids[position]
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{name}.png")
        ids.append(name)
    return ids


def test_index_holds_each_training_image_once_and_finds_a_copy_of_it_first(trained_run, tmp_path):
    run = Run.open(trained_run, progress=False)
    result = build_index(run, IndexOptions(out=tmp_path / "idx", attention_pooling=True))
    train = split_rows(trained_run, "train")
    assert result.count == result.added == len(train)
    index = SimilarityIndex.load(tmp_path / "idx")
    assert sorted(row["id"] for row in index.rows) == sorted(row["id"] for row in train)
    labels = {row["id"]: row["class"] for row in train}
    assert all(row["label"] == labels[row["id"]] for row in index.rows)
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1, atol=1e-5)
    assert index.thumbs.shape[0] == len(train) and index.thumbs.dtype == np.uint8

    ids = write_queries(trained_run, tmp_path / "queries")
    asked = SearchOptions(k=4, include_same=True)
    index, found = search_images(tmp_path / "idx", [tmp_path / "queries"], asked, progress=False)
    lines = result_rows(index, found)
    firsts = {line["query"]: line for line in lines if line["rank"] == 1}
    for name in ids:
        assert firsts[f"{name}.png"]["id"] == name  # asked for, its own copy ranks first
        assert firsts[f"{name}.png"]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert len(lines) == 4 * len(ids)
    _, apart = search_images(tmp_path / "idx", [tmp_path / "queries"], SearchOptions(k=4), progress=False)
    for query, positions in zip(apart.queries, apart.positions, strict=True):
        assert query["id"].removesuffix(".png") not in [index.rows[p]["id"] for p in positions]  # by default: set apart
        assert (positions >= 0).all()  # and still four neighbours
    np.testing.assert_array_equal(apart.positions[:, :3], found.positions[:, 1:])  # the rest, in the same order

    page = write_search_page(index, found, tmp_path / "page.html", tmp_path / "idx")
    text = page.read_text()
    assert text.count("<img") == len(ids) * (1 + 4)
    assert all(name in text for name in ids)
    assert "For research use only, not for diagnosis" in text


def test_other_weights_and_repeated_images_are_refused(trained_run, tmp_path):
    run = Run.open(trained_run, progress=False)
    build_index(run, IndexOptions(out=tmp_path / "idx", kind="hnsw"))
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    weights = other / "checkpoints" / "best.safetensors"
    tensors = load_file(weights)
    first = next(name for name, tensor in tensors.items() if tensor.is_floating_point())
    tensors[first] = tensors[first] + 0.01
    save_file(tensors, weights)
    write_queries(trained_run, tmp_path / "queries", count=1)
    with pytest.raises(RetrievalError, match="embeddings of other weights cannot be compared; rebuild"):
        search_images(tmp_path / "idx", [tmp_path / "queries"], run_dir=other, progress=False)
    with pytest.raises(RetrievalError, match="already in"):
        build_index(run, IndexOptions(out=tmp_path / "idx", add=True))
    with pytest.raises(RetrievalError, match="embeds with"):
        build_index(run, IndexOptions(out=tmp_path / "idx", split="val", add=True, attention_pooling=True))
    added = build_index(run, IndexOptions(out=tmp_path / "idx", split="val", add=True))
    assert added.count == len(split_rows(trained_run, "train")) + len(split_rows(trained_run, "val"))
    assert SimilarityIndex.load(tmp_path / "idx").kind == "hnsw"


def test_an_index_being_written_by_a_live_process_is_not_added_to(trained_run, tmp_path):
    import json
    import os
    import socket

    from attnscope.errors import ConfigError

    out = tmp_path / "idx"
    lock = tmp_path / ".idx.lock"
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2026-12-05T10:00:00"}
    lock.write_text(json.dumps(holder))  # a live process (this test's parent) holds it
    with Run.open(trained_run, progress=False) as run:
        with pytest.raises(ConfigError, match=r"idx is being written by process \d+ .* choose another --out"):
            build_index(run, IndexOptions(out=out))
        assert not out.exists() and lock.exists()
        lock.write_text(json.dumps({**holder, "pid": 2**22 + 12345}))  # its process is gone: stale, taken over
        assert build_index(run, IndexOptions(out=out)).count > 0
    assert not lock.exists()  # released
