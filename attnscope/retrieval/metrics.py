"""Retrieval quality with class labels as relevance: recall@k and mean average precision."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def recall_at_k(
    neighbour_labels: np.ndarray, query_labels: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Share of queries with at least one neighbour of their class among the first ``k`` (metric learning's R@k).

    ``neighbour_labels``: (Q, K) labels of each query's neighbours, best first; ``query_labels``: (Q,).
    """
    if max(ks) > neighbour_labels.shape[1]:
        raise ValueError(f"recall@{max(ks)} needs at least {max(ks)} neighbours, got {neighbour_labels.shape[1]}")
    hits = neighbour_labels == query_labels[:, None]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def average_precision(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    chunk: int = 256,
    head: np.ndarray | None = None,
) -> np.ndarray:
    """Average precision of each query over the whole gallery ranked by inner product: (Q,).

    AP = mean, over the gallery items of the query's class, of the precision at their rank.
    A query whose class is absent from the gallery gets NaN. ``head`` (Q, k): gallery positions
    that rank first, in that order (a re-ranked top k), the rest following by inner product.
    """
    gallery_t = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    gallery_labels_t = torch.from_numpy(np.asarray(gallery_labels))
    ranks = torch.arange(1, len(gallery) + 1, dtype=torch.float64)
    result = []
    for start in range(0, len(queries), chunk):
        block = torch.from_numpy(np.ascontiguousarray(queries[start : start + chunk], dtype=np.float32))
        labels = torch.from_numpy(np.asarray(query_labels[start : start + chunk]))
        order = (block @ gallery_t.T).argsort(dim=1, descending=True, stable=True)
        if head is not None:
            order = _head_first(order, torch.from_numpy(head[start : start + chunk].astype(np.int64)))
        relevant = (gallery_labels_t[order] == labels[:, None]).double()
        precision = relevant.cumsum(dim=1) / ranks
        count = relevant.sum(dim=1)
        ap = (precision * relevant).sum(dim=1) / count.clamp_min(1)
        result.append(torch.where(count > 0, ap, torch.full_like(ap, float("nan"))))
    return torch.cat(result).numpy()


def _head_first(order: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """Each row of ``order`` (a permutation of the gallery) with ``head``'s positions moved to the front."""
    in_head = torch.zeros_like(order, dtype=torch.bool).scatter_(1, head, True)
    rest = order[~in_head.gather(1, order)].reshape(len(order), -1)
    return torch.cat([head, rest], dim=1)
