"""Retrieval metrics against hand-computed values."""

import numpy as np
import pytest

from attnscope.retrieval.metrics import average_precision, recall_at_k


def test_recall_at_k_counts_queries_with_a_hit_in_their_first_k():
    neighbours = np.array([[1, 0, 0], [0, 0, 1], [2, 2, 2]])
    queries = np.array([1, 1, 1])
    assert recall_at_k(neighbours, queries, (1, 2, 3)) == {1: 1 / 3, 2: 1 / 3, 3: 2 / 3}
    with pytest.raises(ValueError, match="recall@5"):
        recall_at_k(neighbours, queries, (5,))


def test_average_precision_over_the_whole_ranking():
    gallery = np.eye(4, dtype=np.float32)
    gallery_labels = np.array([0, 1, 0, 1])
    # query close to items 0 > 1 > 2 > 3: relevant (label 0) at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2
    query = np.array([[0.8, 0.6, 0.4, 0.1]], dtype=np.float32)
    ap = average_precision(query, gallery, np.array([0]), gallery_labels)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    # relevant at ranks 2 and 4 for label 1 -> (1/2 + 2/4) / 2
    assert average_precision(query, gallery, np.array([1]), gallery_labels)[0] == pytest.approx(0.5)
    assert np.isnan(average_precision(query, gallery, np.array([7]), gallery_labels)[0])
    chunked = average_precision(np.repeat(query, 5, 0), gallery, np.zeros(5, int), gallery_labels, chunk=2)
    np.testing.assert_allclose(chunked, np.full(5, (1 + 2 / 3) / 2))


def test_average_precision_with_a_reranked_head_is_the_ap_of_that_ranking():
    from attnscope.retrieval.metrics import average_precision

    rng = np.random.default_rng(0)
    gallery, queries = rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    gallery_labels, query_labels = np.arange(30) % 3, np.array([0, 1, 2])
    order = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")
    head = order[:, :6][:, ::-1].copy()  # the top six, reversed
    ranking = np.concatenate([head, order[:, 6:]], axis=1)
    expected = []
    for q in range(3):
        relevant = gallery_labels[ranking[q]] == query_labels[q]
        precision = np.cumsum(relevant) / np.arange(1, 31)
        expected.append((precision * relevant).sum() / relevant.sum())
    np.testing.assert_allclose(average_precision(queries, gallery, query_labels, gallery_labels, head=head), expected)
    assert not np.allclose(average_precision(queries, gallery, query_labels, gallery_labels), expected)
