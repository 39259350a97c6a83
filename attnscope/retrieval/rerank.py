"""Re-ranking an index's top-k with attention between the query and each candidate.

After the global-descriptor search (one vector an image), a small cross-attention model
reorders each query's first candidates, the recipe of Reranking Transformers (Tan et al.
2021): the two images' local features attend to each other and a head scores the pair.

- **Tokens.** An image's tokens are the feature map of the embedding's last stage,
  average-pooled to at most 4 x 4 positions: (T <= 16, C) per image, kept as float16 beside
  the index's vectors (``tokens.npy``). They come from the same forward pass as the
  embedding (``embed(..., with_tokens=True)``).
- **Model.** Both token sets are projected to ``dim`` and given a learned position
  embedding; the query's tokens attend to the candidate's and the candidate's to the
  query's (one multi-head attention, shared), each with a residual and layer norm; the two
  attended sets are averaged into vectors ``a`` and ``b``, and a two-layer head scores
  ``[a * b, |a - b|]``. The score is symmetric in the two images by construction.
- **Training.** On the indexed images themselves (the run's training split) with their
  labels: each sampled anchor is paired with its ``neighbours`` nearest indexed images by
  the index's own similarity (the hard cases the re-ranker will see), labelled 1 when the
  classes agree; binary cross-entropy, positives weighed up to balance, Adam.
- **Search.** The index gathers ``rerank_k`` candidates by cosine similarity; the re-ranker
  scores each pair and the candidates are sorted by that score (cosine breaks ties).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from attnscope.errors import ConfigError, RetrievalError
from attnscope.retrieval.embed import EmbeddingConfig, resolve_stages

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

SCORE_BATCH = 4096


@dataclass(frozen=True)
class ReRankerOptions:
    """The re-ranker's width and its training: pairs per anchor, anchors sampled, epochs, step size."""

    dim: int = 64
    heads: int = 4
    neighbours: int = 20
    anchors: int = 20000
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 256
    seed: int = 0

    def check(self) -> None:
        for name, value in asdict(self).items():
            if name != "seed" and not value > 0:
                raise ConfigError(f"re-ranker option {name}={value} must be > 0")
        if self.dim % self.heads:
            raise ConfigError(f"re-ranker dim={self.dim} must be divisible by heads={self.heads}")


def token_stage(model: nn.Module, embedding: EmbeddingConfig) -> str:
    """The module whose feature map gives the tokens: the embedding's last stage."""
    return resolve_stages(model, embedding)[-1]


class CrossAttentionReRanker(nn.Module):
    """Scores how likely two images share a class from their tokens (Tan et al. 2021's re-ranking).

    ``forward(first, second)`` takes (P, T, channels) token sets and returns (P,) logits; it is
    symmetric: swapping the two gives the same score.
    """

    def __init__(self, channels: int, tokens: int, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.channels, self.tokens, self.dim, self.heads = channels, tokens, dim, heads
        self.project = nn.Sequential(nn.Linear(channels, dim), nn.LayerNorm(dim))
        self.position = nn.Parameter(torch.zeros(tokens, dim))
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def architecture(self) -> dict[str, int]:
        return {"channels": self.channels, "tokens": self.tokens, "dim": self.dim, "heads": self.heads}

    def attend(self, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``own`` tokens after attending to ``other``'s, averaged into one vector (P, dim)."""
        attended, _ = self.cross(own, other, other, need_weights=False)
        return self.norm(own + attended).mean(dim=1)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        a = self.project(first.float()) + self.position
        b = self.project(second.float()) + self.position
        pooled_a, pooled_b = self.attend(a, b), self.attend(b, a)
        return self.head(torch.cat([pooled_a * pooled_b, (pooled_a - pooled_b).abs()], dim=1)).squeeze(1)


def training_pairs(
    vectors: np.ndarray, labels: np.ndarray, options: ReRankerOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor, candidate, same class) for each sampled anchor and its nearest indexed images."""
    rng = np.random.default_rng(options.seed)
    count = len(vectors)
    anchors = np.sort(rng.choice(count, min(options.anchors, count), replace=False))
    gallery = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    neighbours = min(options.neighbours, count - 1)
    if neighbours < 1:
        raise RetrievalError("a re-ranker needs at least two indexed images to pair")
    found = []
    for start in range(0, len(anchors), 1024):
        block = anchors[start : start + 1024]
        scores = gallery[block] @ gallery.T
        scores[torch.arange(len(block)), torch.from_numpy(block)] = -math.inf  # never an image with itself
        found.append(scores.topk(neighbours, dim=1).indices.numpy())
    candidates = np.concatenate(found)
    first = np.repeat(anchors, neighbours)
    second = candidates.reshape(-1)
    return first, second, (labels[first] == labels[second]).astype(np.float32)


def train_reranker(
    tokens: np.ndarray, vectors: np.ndarray, labels: np.ndarray, options: ReRankerOptions, progress: bool = True
) -> tuple[CrossAttentionReRanker, dict]:
    """A re-ranker trained on the indexed images' own pairs; returns it and what its training saw."""
    options.check()
    if labels.ndim != 1:
        raise RetrievalError("the re-ranker trains on single-label data (one class an image)")
    first, second, same = training_pairs(vectors, labels, options)
    torch.manual_seed(options.seed)
    model = CrossAttentionReRanker(tokens.shape[2], tokens.shape[1], options.dim, options.heads)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    positives = float(same.mean())
    pos_weight = torch.tensor((1 - positives) / max(positives, 1e-6))
    all_tokens = torch.from_numpy(tokens)
    generator = torch.Generator().manual_seed(options.seed)
    losses = []
    model.train()
    for epoch in range(options.epochs):
        order = torch.randperm(len(first), generator=generator).numpy()
        steps = range(0, len(order), options.batch_size)
        total = 0.0
        for start in tqdm(steps, desc=f"re-ranker epoch {epoch + 1}", disable=not progress, leave=False):
            chosen = order[start : start + options.batch_size]
            logits = model(all_tokens[first[chosen]], all_tokens[second[chosen]])
            target = torch.from_numpy(same[chosen])
            loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(chosen)
        losses.append(total / len(order))
        log.info("re-ranker epoch %d/%d: loss %.4f", epoch + 1, options.epochs, losses[-1])
    model.eval()
    meta = {"options": asdict(options), "pairs": len(first), "positive_share": positives, "losses": losses}
    return model, meta


@torch.no_grad()
def rerank(
    model: CrossAttentionReRanker,
    query_tokens: np.ndarray,
    gallery_tokens: np.ndarray,
    positions: np.ndarray,
    similarities: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's candidates (Q, k) sorted by the re-ranker's score, best first (cosine breaks ties);
    returns (positions, similarities, scores in [0, 1]). Missing places (-1) stay last."""
    queries, k = positions.shape
    valid = positions >= 0
    pairs_q = np.repeat(np.arange(queries), k)[valid.reshape(-1)]
    pairs_g = positions[valid]
    scores = np.full(positions.shape, -np.inf, dtype=np.float64)
    values = []
    for start in range(0, len(pairs_q), SCORE_BATCH):
        q = torch.from_numpy(query_tokens[pairs_q[start : start + SCORE_BATCH]])
        g = torch.from_numpy(gallery_tokens[pairs_g[start : start + SCORE_BATCH]])
        values.append(torch.sigmoid(model(q, g)).double().numpy())
    if values:
        scores[valid] = np.concatenate(values)
    ties = np.nan_to_num(similarities.astype(np.float64), nan=-np.inf)
    order = np.lexsort((-ties, -scores), axis=1)
    sorted_positions = np.take_along_axis(positions, order, 1)
    sorted_scores = np.where(sorted_positions >= 0, np.take_along_axis(scores, order, 1), np.nan)
    return sorted_positions, np.take_along_axis(similarities, order, 1), sorted_scores
