"""The similarity index: exact search equals brute force, approximate kinds recall, disk round trips, refusals."""

import json

import numpy as np
import pytest
import torch

from attnscope.errors import ConfigError, DataError, RetrievalError
from attnscope.retrieval.embed import EmbeddingConfig, fit_pca
from attnscope.retrieval.index import ROW_FIELDS, SimilarityIndex, resolve_params

META = {"model": "m", "weights_sha256": "abc"}


def without_checksums(folder):
    """Drop the checksums from an index's header, as an index written before they were recorded."""
    header = json.loads((folder / "index.json").read_text())
    del header["checksums"]
    (folder / "index.json").write_text(json.dumps(header))


def unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def rows_for(count: int, start: int = 0) -> list[dict]:
    return [
        {
            "id": f"img{start + i}",
            "label": str(i % 3),
            "path": f"/x/{start + i}.png",
            "source": "s",
            "group": f"p{i % 7}",
        }
        for i in range(count)
    ]


def brute_force(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores, positions = torch.from_numpy(queries @ gallery.T).topk(k, dim=1)
    return positions.numpy(), scores.numpy()


def test_exact_search_equals_brute_force_top_k():
    gallery, queries = unit_vectors(500, 32, 0), unit_vectors(40, 32, 1)
    index = SimilarityIndex.create("flat", gallery, rows_for(500), EmbeddingConfig(), META)
    positions, similarities = index.search(queries, 10)
    expected_positions, expected_scores = brute_force(queries, gallery, 10)
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_allclose(similarities, expected_scores, atol=1e-5)


@pytest.mark.parametrize(
    "kind, params, least_recall",
    [
        ("ivf", {"nlist": 8, "nprobe": 8}, 0.999),  # every cell probed: exact
        ("hnsw", {}, 0.95),
        ("lsh", {"rerank": 10}, 0.5),
    ],
)
def test_approximate_kinds_find_most_true_neighbours_and_score_them_exactly(kind, params, least_recall):
    gallery, queries = unit_vectors(1000, 16, 2), unit_vectors(50, 16, 3)
    index = SimilarityIndex.create(kind, gallery, rows_for(1000), EmbeddingConfig(), META, params)
    positions, similarities = index.search(queries, 10)
    truth, _ = brute_force(queries, gallery, 10)
    recall = np.mean([len(set(p) & set(t)) / 10 for p, t in zip(positions, truth, strict=True)])
    assert recall >= least_recall
    exact = np.einsum("qd,qkd->qk", queries, gallery[positions])
    np.testing.assert_allclose(similarities, exact, atol=1e-5)  # reported similarity is the exact cosine
    assert (np.diff(similarities, axis=1) <= 1e-6).all()  # best first


def test_save_load_round_trip_keeps_results_rows_pca_and_thumbnails(tmp_path):
    raw = unit_vectors(300, 24, 4)
    pca = fit_pca(raw, 8)
    thumbs = np.random.default_rng(5).integers(0, 255, (300, 4, 4, 1), dtype=np.uint8)
    index = SimilarityIndex.create(
        "hnsw", pca.apply(raw), rows_for(300), EmbeddingConfig(pca_dim=8), META, {"M": 8}, pca=pca, thumbs=thumbs
    )
    queries = pca.apply(unit_vectors(20, 24, 6))
    before = index.search(queries, 5)
    index.save(tmp_path / "idx")
    loaded = SimilarityIndex.load(tmp_path / "idx")
    after = loaded.search(queries, 5)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_allclose(before[1], after[1])
    assert loaded.rows == [{k: str(row.get(k, "")) for k in ROW_FIELDS} for row in rows_for(300)]
    assert loaded.params == {"M": 8, "ef_search": 64, "ef_construction": 80}
    assert loaded.embedding == EmbeddingConfig(pca_dim=8) and loaded.meta["model"] == "m"
    np.testing.assert_array_equal(loaded.pca.components, pca.components)
    np.testing.assert_array_equal(loaded.thumbs, thumbs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no staging folder left


def test_float16_storage_halves_the_vectors_and_keeps_the_ranking():
    gallery, queries = unit_vectors(400, 32, 7), unit_vectors(30, 32, 8)
    index = SimilarityIndex.create("flat", gallery, rows_for(400), EmbeddingConfig(dtype="float16"), META)
    assert index.vectors.dtype == np.float16
    positions, _ = index.search(queries, 1)
    truth, _ = brute_force(queries, gallery, 1)
    assert (positions == truth).mean() >= 0.95


def test_adding_makes_new_rows_searchable_and_a_small_index_pads_with_minus_one():
    first, second = unit_vectors(5, 8, 9), unit_vectors(3, 8, 10)
    index = SimilarityIndex.create("flat", first, rows_for(5), EmbeddingConfig(), META)
    index.add(second, rows_for(3, start=5))
    positions, similarities = index.search(second[:1], 10)
    assert positions[0, 0] == 5 and similarities[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert list(positions[0, 8:]) == [-1, -1] and np.isnan(similarities[0, 8:]).all()
    with pytest.raises(RetrievalError, match="cannot add 4-d vectors to an index of 8-d"):
        index.add(unit_vectors(1, 4, 0), rows_for(1))


def test_queries_of_another_size_and_bad_parameters_are_refused():
    index = SimilarityIndex.create("flat", unit_vectors(10, 8, 0), rows_for(10), EmbeddingConfig(), META)
    with pytest.raises(RetrievalError, match="queries are 6-d but the index holds 8-d.*another model"):
        index.search(unit_vectors(2, 6, 1), 3)
    with pytest.raises(ConfigError, match="no parameter.*'nbits'.*nlist, nprobe"):
        resolve_params("ivf", 8, 100, {"nbits": 3})
    with pytest.raises(ConfigError, match="unknown index kind 'annoy'"):
        resolve_params("annoy", 8, 100, None)
    with pytest.raises(ConfigError, match="nlist=50 needs at least that many"):
        SimilarityIndex.create("ivf", unit_vectors(10, 8, 0), rows_for(10), EmbeddingConfig(), META, {"nlist": 50})
    assert resolve_params("ivf", 8, 10000, None)["nlist"] == 256  # min(4 sqrt(N), N / 39)


def test_damaged_or_foreign_folders_are_refused_with_a_fix(tmp_path):
    with pytest.raises(RetrievalError, match="not an attnscope index.*attnscope index"):
        SimilarityIndex.load(tmp_path)
    index = SimilarityIndex.create("flat", unit_vectors(10, 8, 0), rows_for(10), EmbeddingConfig(), META)
    index.save(tmp_path / "idx")
    rows = (tmp_path / "idx" / "rows.csv").read_text().splitlines()
    (tmp_path / "idx" / "rows.csv").write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")
    with pytest.raises(RetrievalError, match=r"rows.csv: missing or changed since the index was written.*rebuild"):
        SimilarityIndex.load(tmp_path / "idx")  # reordered rows would answer with other images' labels
    (tmp_path / "idx" / "rows.csv").write_text("\n".join(rows[:-2]) + "\n")
    without_checksums(tmp_path / "idx")  # as an index written before checksums were recorded
    with pytest.raises(RetrievalError, match="disagree on the number of rows.*rebuild"):
        SimilarityIndex.load(tmp_path / "idx")


@pytest.mark.parametrize(
    "header, message",
    [(b"\xff\xfe not text", "is not UTF-8 text"), (b"[1, 2]", "is not a JSON object"), (b"{", "is not valid JSON")],
)
def test_an_index_header_that_is_not_one_is_refused_by_name(tmp_path, header, message):
    SimilarityIndex.create("flat", unit_vectors(10, 8, 0), rows_for(10), EmbeddingConfig(), META).save(tmp_path / "i")
    (tmp_path / "i" / "index.json").write_bytes(header)
    with pytest.raises(RetrievalError, match=f"index.json {message}.*rebuild the index"):
        SimilarityIndex.load(tmp_path / "i")


def test_thumbnails_of_the_wrong_shape_are_refused_not_indexed_past(tmp_path):
    thumbs = np.zeros((10, 4, 4, 3), dtype=np.uint8)
    index = SimilarityIndex.create("flat", unit_vectors(10, 8, 0), rows_for(10), EmbeddingConfig(), META)
    index.thumbs = thumbs
    index.save(tmp_path / "i")
    assert SimilarityIndex.load(tmp_path / "i").thumbs.shape == (10, 4, 4, 3)
    np.save(tmp_path / "i" / "thumbs.npy", thumbs[:3])
    without_checksums(tmp_path / "i")
    with pytest.raises(RetrievalError, match=r"thumbs.npy: holds uint8 of shape \(3, 4, 4, 3\), not 10 uint8"):
        SimilarityIndex.load(tmp_path / "i")


def test_a_failed_save_keeps_the_previous_index_whole(tmp_path, monkeypatch):
    old = SimilarityIndex.create("flat", unit_vectors(10, 8, 0), rows_for(10), EmbeddingConfig(), META)
    old.save(tmp_path / "idx")
    new = SimilarityIndex.create("flat", unit_vectors(20, 8, 1), rows_for(20), EmbeddingConfig(), META)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "idx", replace=True)
    monkeypatch.undo()
    assert len(SimilarityIndex.load(tmp_path / "idx")) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_ivf_trains_on_a_seeded_sample_of_distinct_rows():
    from attnscope.retrieval.index import training_sample

    data = np.arange(100, dtype=np.float32)[:, None]
    sample = training_sample(data, 30)
    assert len(np.unique(sample)) == 30 and set(sample[:, 0]) <= set(range(100))
    np.testing.assert_array_equal(sample, training_sample(data, 30))  # same seed, same sample
    assert training_sample(data, 500) is data


def test_save_replaces_only_an_attnscope_index_and_only_when_asked(tmp_path):
    """Regression: `index --out DIR` used to delete whatever DIR was (a run, a folder of runs)."""
    index = SimilarityIndex.create("flat", unit_vectors(10, 8, 0), rows_for(10), EmbeddingConfig(), META)
    precious = tmp_path / "runs"
    (precious / "r" / "checkpoints").mkdir(parents=True)
    (precious / "r" / "checkpoints" / "best.safetensors").write_bytes(b"weights")
    for target in (precious, precious / "r", precious / "r" / "checkpoints" / "best.safetensors"):
        with pytest.raises(DataError, match="is not an attnscope index .*never replaces a folder or file it did not"):
            index.save(target, replace=True)
    assert (precious / "r" / "checkpoints" / "best.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in precious.iterdir()) == ["r"]
    index.save(tmp_path / "idx")
    with pytest.raises(ConfigError, match="already holds an attnscope index; pass --force to replace it, or --add"):
        index.save(tmp_path / "idx")
    bigger = SimilarityIndex.create("flat", unit_vectors(12, 8, 1), rows_for(12), EmbeddingConfig(), META)
    bigger.save(tmp_path / "idx", replace=True)
    assert len(SimilarityIndex.load(tmp_path / "idx")) == 12


def test_an_index_written_before_markers_can_still_be_extended(tmp_path):
    index = SimilarityIndex.create("flat", unit_vectors(10, 8, 0), rows_for(10), EmbeddingConfig(), META)
    index.save(tmp_path / "idx")
    (tmp_path / "idx" / ".attnscope").unlink()  # as an index of an earlier attnscope
    index.save(tmp_path / "idx", replace=True)
    assert len(SimilarityIndex.load(tmp_path / "idx")) == 10
