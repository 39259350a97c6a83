"""Bucketed p-stable LSH: buckets and probes equal their definitions written out, the index saves and adds."""

import numpy as np
import pytest

from attnscope.errors import ConfigError, RetrievalError
from attnscope.retrieval.embed import EmbeddingConfig
from attnscope.retrieval.index import SimilarityIndex
from attnscope.retrieval.lsh import BucketLSH
from tests.retrieval.test_index import META, brute_force, rows_for, unit_vectors, without_checksums


def intervals_of(index: BucketLSH, data: np.ndarray) -> np.ndarray:
    """(N, tables * directions) interval numbers: how many inner edges each projection has passed."""
    projected = data @ index.projections
    return np.stack(
        [
            np.searchsorted(edges[1:-1], column, side="right")
            for column, edges in zip(projected.T, index.edges, strict=True)
        ],
        axis=1,
    )


def test_buckets_are_the_quantised_projections_and_share_the_gallery_equally():
    gallery = unit_vectors(2000, 12, 0)
    index = BucketLSH(12, tables=3, directions=2, intervals=4, margin=0.0)
    index.train(gallery)
    index.add(gallery)
    cells = intervals_of(index, gallery)
    for direction in range(6):  # quantile edges: each interval holds a quarter of the gallery
        assert np.bincount(cells[:, direction], minlength=4).tolist() == [500] * 4
    np.testing.assert_array_equal(np.floor(index._positions(gallery)).reshape(2000, 6), cells)
    query = unit_vectors(1, 12, 1)[0]
    query_cells = intervals_of(index, query[None])[0].reshape(3, 2)
    same_bucket = (cells.reshape(2000, 3, 2) == query_cells).all(axis=2).any(axis=1)  # in any table
    np.testing.assert_array_equal(index.candidates(index._positions(query[None])[0]), np.flatnonzero(same_bucket))


def test_the_margin_also_probes_the_bucket_across_each_near_edge():
    gallery = unit_vectors(3000, 10, 2)
    index = BucketLSH(10, tables=2, directions=3, intervals=4, margin=0.3)
    index.train(gallery)
    index.add(gallery)
    cells = intervals_of(index, gallery).reshape(3000, 2, 3)
    for seed in range(5):
        query = unit_vectors(1, 10, 10 + seed)
        position = index._positions(query)[0]
        own, fraction = np.floor(position), position - np.floor(position)
        expected = np.zeros(3000, dtype=bool)
        for table in range(2):
            probes = [own[table]]
            for d in range(3):
                step = -1 if fraction[table, d] < 0.3 else 1 if fraction[table, d] > 0.7 else 0
                if step and 0 <= own[table, d] + step < 4:
                    moved = own[table].copy()
                    moved[d] += step
                    probes.append(moved)
            for probe in probes:
                expected |= (cells[:, table] == probe).all(axis=1)
        np.testing.assert_array_equal(index.candidates(position), np.flatnonzero(expected))
        index.margin = 0.0
        assert set(index.candidates(position)) <= set(np.flatnonzero(expected))
        index.margin = 0.3


def test_lsh_buckets_find_most_true_neighbours_scored_exactly_and_survive_a_round_trip(tmp_path):
    centres = unit_vectors(8, 32, 3)
    rng = np.random.default_rng(4)
    gallery = centres[rng.integers(0, 8, 1500)] + 0.3 * rng.normal(size=(1500, 32)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[:40] + 0.05 * rng.normal(size=(40, 32)).astype(np.float32)
    index = SimilarityIndex.create("lsh_buckets", gallery, rows_for(1500), EmbeddingConfig(), META)
    positions, similarities = index.search(queries, 10)
    truth, _ = brute_force(queries, gallery, 10)
    assert np.mean([len(set(p) & set(t)) / 10 for p, t in zip(positions, truth, strict=True)]) >= 0.8
    np.testing.assert_allclose(similarities, np.einsum("qd,qkd->qk", queries, gallery[positions]), atol=1e-5)
    index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "index.lsh.npz").is_file() and not (tmp_path / "idx" / "index.faiss").exists()
    loaded = SimilarityIndex.load(tmp_path / "idx")
    np.testing.assert_array_equal(loaded.search(queries, 10)[0], positions)
    assert loaded.params == {"tables": 32, "directions": 4, "intervals": 4, "margin": 0.2, "rerank": 10}
    extra = unit_vectors(3, 32, 5)
    loaded.add(extra, rows_for(3, start=1500))
    assert list(loaded.search(extra, 1)[0][:, 0]) == [1500, 1501, 1502]
    (tmp_path / "idx" / "index.lsh.npz").write_bytes(b"not a zip")
    with pytest.raises(RetrievalError, match="index.lsh.npz: missing or changed since the index was written"):
        SimilarityIndex.load(tmp_path / "idx")
    without_checksums(tmp_path / "idx")  # as an index written before checksums were recorded
    with pytest.raises(RetrievalError, match="cannot be read.*rebuild"):
        SimilarityIndex.load(tmp_path / "idx")


def test_bad_bucket_parameters_are_refused_by_name():
    data = unit_vectors(50, 8, 6)
    with pytest.raises(ConfigError, match=r"margin=0.7 must be a number in \[0, 0.5\)"):
        SimilarityIndex.create("lsh_buckets", data, rows_for(50), EmbeddingConfig(), META, {"margin": 0.7})
    with pytest.raises(ConfigError, match="intervals=2 .* below 2\\*\\*62"):
        SimilarityIndex.create(
            "lsh_buckets", data, rows_for(50), EmbeddingConfig(), META, {"directions": 64, "intervals": 2}
        )
    with pytest.raises(ConfigError, match="tables=0 must be a positive integer"):
        SimilarityIndex.create("lsh_buckets", data, rows_for(50), EmbeddingConfig(), META, {"tables": 0})
