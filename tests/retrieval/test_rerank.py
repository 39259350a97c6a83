"""The cross-attention re-ranker: symmetric, trained pairs as defined, learns what cosine misses, reorders and
saves with the index, end to end from a run."""

import numpy as np
import pytest
import torch

from attnscope.engine.run import Run
from attnscope.errors import ConfigError, RetrievalError
from attnscope.retrieval import SimilarityIndex, build_index, result_rows, search_images
from attnscope.retrieval.embed import EmbeddingConfig
from attnscope.retrieval.rerank import CrossAttentionReRanker, ReRankerOptions, rerank, train_reranker, training_pairs
from attnscope.retrieval.service import IndexOptions, SearchOptions
from tests.retrieval.test_index import META, rows_for, unit_vectors, without_checksums
from tests.retrieval.test_service import write_queries


def test_the_score_is_symmetric_in_the_two_images():
    torch.manual_seed(0)
    model = CrossAttentionReRanker(channels=6, tokens=4, dim=8, heads=2).eval()
    a, b = torch.randn(5, 4, 6), torch.randn(5, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(a, b), model(b, a))
        assert not torch.allclose(model(a, b), model(a, a))


def test_training_pairs_are_each_anchor_and_its_nearest_other_images():
    vectors = unit_vectors(60, 8, 0)
    labels = np.arange(60) % 3
    first, second, same = training_pairs(vectors, labels, ReRankerOptions(neighbours=4, anchors=10, seed=1))
    assert len(first) == 40 and not np.any(first == second)
    for anchor in np.unique(first):
        scores = vectors @ vectors[anchor]
        scores[anchor] = -np.inf
        assert set(second[first == anchor]) == set(np.argsort(-scores)[:4])
    np.testing.assert_array_equal(same, (labels[first] == labels[second]).astype(np.float32))


def clustered_tokens(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens whose class lies in *where* a pattern sits (a cue a mean-pooled vector loses), and vectors
    made from the mean token plus noise, so that cosine neighbours mix the classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    tokens = rng.normal(0, 0.3, (count, 4, 6)).astype(np.float32)
    pattern = np.array([1.5, -1.0, 0.5, 0, 0, 0], dtype=np.float32)
    tokens[np.arange(count), labels * 3] += pattern  # class 0: first token, class 1: last token
    vectors = tokens.mean(axis=1) + rng.normal(0, 0.3, (count, 6)).astype(np.float32)
    return tokens.astype(np.float16), vectors / np.linalg.norm(vectors, axis=1, keepdims=True), labels


@pytest.mark.slow
def test_a_trained_reranker_puts_same_class_candidates_first_where_cosine_does_not():
    tokens, vectors, labels = clustered_tokens(400, 2)
    options = ReRankerOptions(dim=16, heads=2, neighbours=10, epochs=6, lr=3e-3, batch_size=64)
    model, meta = train_reranker(tokens, vectors, labels, options, progress=False)
    assert meta["pairs"] == 4000 and meta["losses"][-1] < meta["losses"][0]
    queries, query_vectors, query_labels = clustered_tokens(60, 3)
    index = SimilarityIndex.create("flat", vectors, rows_for(400), EmbeddingConfig(), META)
    positions, similarities = index.search(query_vectors, 20)
    reordered, resorted, scores = rerank(model, queries, tokens, positions, similarities)
    before = (labels[positions[:, :5]] == query_labels[:, None]).mean()
    after = (labels[reordered[:, :5]] == query_labels[:, None]).mean()
    assert after > before + 0.2 and after > 0.9
    assert (np.diff(scores, axis=1) <= 1e-12).all()  # best first
    for row in range(60):  # the same candidates, their cosine carried along
        assert set(reordered[row]) == set(positions[row])
        cosine = dict(zip(positions[row], similarities[row], strict=True))
        assert [cosine[p] for p in reordered[row]] == list(resorted[row])


def test_missing_candidates_stay_last_and_options_are_checked():
    model = CrossAttentionReRanker(channels=6, tokens=4, dim=8, heads=2).eval()
    tokens = np.random.default_rng(4).normal(size=(5, 4, 6)).astype(np.float16)
    positions = np.array([[3, -1, 1, -1]])
    similarities = np.array([[0.9, np.nan, 0.5, np.nan]], dtype=np.float32)
    reordered, _, scores = rerank(model, tokens[:1], tokens, positions, similarities)
    assert set(reordered[0, :2]) == {1, 3} and list(reordered[0, 2:]) == [-1, -1] and np.isnan(scores[0, 2:]).all()
    with pytest.raises(ConfigError, match="dim=10 must be divisible by heads=4"):
        ReRankerOptions(dim=10).check()
    with pytest.raises(ConfigError, match="epochs=0 must be > 0"):
        ReRankerOptions(epochs=0).check()


def test_index_trains_saves_and_searches_with_its_reranker(trained_run, tmp_path):
    run = Run.open(trained_run, progress=False)
    options = IndexOptions(out=tmp_path / "idx", train_reranker=True, reranker=ReRankerOptions(epochs=1, dim=16))
    build_index(run, options)
    index = SimilarityIndex.load(tmp_path / "idx")
    assert index.reranker is not None and index.tokens.shape[0] == len(index) and index.tokens.dtype == np.float16
    assert index.meta["reranker"]["pairs"] > 0 and index.meta["reranker"]["dim"] == 16
    ids = write_queries(trained_run, tmp_path / "queries")
    index, found = search_images(
        tmp_path / "idx", [tmp_path / "queries"], SearchOptions(k=4, rerank_k=12), progress=False
    )
    assert found.positions.shape == (len(ids), 4) and (np.diff(found.scores, axis=1) <= 1e-9).all()
    lines = result_rows(index, found)
    assert all(0 <= line["rerank_score"] <= 1 for line in lines)
    _, plain = search_images(tmp_path / "idx", [tmp_path / "queries"], SearchOptions(k=12), progress=False)
    for row in range(len(ids)):  # the re-ranked first four come from the cosine search's first twelve
        assert set(found.positions[row]) <= set(plain.positions[row])
    (tmp_path / "idx" / "reranker.safetensors").write_bytes(b"broken")
    with pytest.raises(RetrievalError, match="reranker.safetensors: missing or changed since the index was written"):
        SimilarityIndex.load(tmp_path / "idx")
    without_checksums(tmp_path / "idx")
    with pytest.raises(RetrievalError, match="re-ranker cannot be read.*rebuild"):
        SimilarityIndex.load(tmp_path / "idx")
    build_index(run, IndexOptions(out=tmp_path / "plain"))
    with pytest.raises(RetrievalError, match="no re-ranker; build it with attnscope index --train-reranker"):
        search_images(tmp_path / "plain", [tmp_path / "queries"], SearchOptions(k=2, rerank_k=5), progress=False)


def test_an_index_with_a_reranker_adds_rows_only_with_their_tokens():
    tokens, vectors, labels = clustered_tokens(30, 5)
    model, meta = train_reranker(tokens, vectors, labels, ReRankerOptions(dim=8, heads=2, epochs=1), progress=False)
    index = SimilarityIndex.create("flat", vectors, rows_for(30), EmbeddingConfig(), META)
    index.attach_reranker(model, tokens, meta)
    more_tokens, more_vectors, _ = clustered_tokens(4, 6)
    with pytest.raises(RetrievalError, match="tokens must be given exactly when the index has a re-ranker"):
        index.add(more_vectors, rows_for(4, start=30))
    index.add(more_vectors, rows_for(4, start=30), tokens=more_tokens)
    assert index.tokens.shape == (34, 4, 6)
    with pytest.raises(RetrievalError, match="do not fit 34 rows"):
        index.attach_reranker(model, tokens, meta)
