"""Bucketed random-projection hashing: the p-stable LSH of Datar et al. 2004 (E2LSH), with multi-probe.

Each of ``tables`` hash tables draws ``directions`` random directions from U[-1, 1]^d. A vector's
projection on a direction is quantised into one of ``intervals`` intervals whose edges are the
quantiles of the gallery's projections on it (equal shares, where equal widths, measured, crowd the
middle intervals: a query then reads a quarter of the gallery); the tuple of interval numbers is the
vector's bucket in that table.
Close vectors project close, so they share buckets in some tables. A query looks in its own bucket
of every table and, for each direction where its projection lies within ``margin`` (a share of the
interval's width) of an interval's edge, in the bucket across that edge as well (multi-probe,
Lv et al. 2007, one step at a time). The candidates are scored exactly.

Unlike sign-random-projection hashing (Charikar 2002, FAISS ``IndexLSH``, the ``lsh`` kind), which
keeps one bit per direction and ranks the whole gallery by Hamming distance, the buckets are looked
up: a query reads only the rows that share a bucket with it.
"""

from __future__ import annotations

import io

import numpy as np

from attnscope.errors import ConfigError, RetrievalError

SEED = 0


class BucketLSH:
    """Bucketed p-stable LSH over ``dim``-d vectors; the interface of the FAISS indexes attnscope uses."""

    def __init__(self, dim: int, tables: int, directions: int, intervals: int, margin: float, seed: int = SEED):
        if intervals < 2 or intervals**directions >= 2**62:
            raise ConfigError(
                f"lsh_buckets: intervals={intervals} must be >= 2 and intervals ** directions "
                f"({intervals}**{directions}) below 2**62"
            )
        if not 0 <= margin < 0.5:
            raise ConfigError(f"lsh_buckets: margin={margin} must lie in [0, 0.5): a share of an interval's width")
        rng = np.random.default_rng(seed)
        self.dim, self.intervals, self.margin = dim, intervals, float(margin)
        self.projections = rng.uniform(-1, 1, (dim, tables * directions)).astype(np.float32)
        self.shape = (tables, directions)
        self.edges: np.ndarray | None = None  # (tables * directions, intervals + 1) each direction's edges
        self.keys = [np.empty(0, dtype=np.int64) for _ in range(tables)]  # sorted bucket keys per table
        self.ids = [np.empty(0, dtype=np.int64) for _ in range(tables)]  # the rows, in the keys' order
        self.ntotal = 0

    @property
    def is_trained(self) -> bool:
        return self.edges is not None

    def train(self, data: np.ndarray) -> None:
        """Place each direction's interval edges at the quantiles of the projections of ``data``, so that
        every interval holds an equal share of the gallery (equal widths would crowd the middle ones)."""
        projected = data @ self.projections
        edges = np.quantile(projected, np.linspace(0, 1, self.intervals + 1), axis=0).T
        self.edges = np.maximum.accumulate(edges + np.arange(self.intervals + 1) * 1e-7, axis=1).astype(np.float64)

    def _positions(self, data: np.ndarray) -> np.ndarray:
        """(N, tables, directions) position in interval units: the integer part is the interval, the
        fraction how far across it (linear between its edges)."""
        if self.edges is None:
            raise RetrievalError("lsh_buckets: the index is not trained")
        projected = data @ self.projections
        units = np.arange(self.intervals + 1, dtype=np.float64)
        positions = np.stack(
            [np.interp(column, edges, units) for column, edges in zip(projected.T, self.edges, strict=True)], axis=1
        )
        return np.clip(positions, 0, self.intervals - 1e-6).reshape(len(data), *self.shape)

    def _keys(self, cells: np.ndarray) -> np.ndarray:
        """Bucket keys (..., tables) from interval numbers (..., tables, directions), mixed radix."""
        radix = self.intervals ** np.arange(self.shape[1], dtype=np.int64)
        return (cells.astype(np.int64) * radix).sum(axis=-1)

    def add(self, data: np.ndarray) -> None:
        keys = self._keys(np.floor(self._positions(data)))  # (N, tables)
        new_ids = np.arange(self.ntotal, self.ntotal + len(data), dtype=np.int64)
        for table in range(self.shape[0]):
            merged_keys = np.concatenate([self.keys[table], keys[:, table]])
            merged_ids = np.concatenate([self.ids[table], new_ids])
            order = np.argsort(merged_keys, kind="stable")
            self.keys[table], self.ids[table] = merged_keys[order], merged_ids[order]
        self.ntotal += len(data)

    def probes(self, position: np.ndarray) -> np.ndarray:
        """(tables, probes) bucket keys one query looks in: its own, and one across each near edge."""
        cells = np.floor(position)  # (tables, directions)
        fraction = position - cells
        steps = np.where(fraction < self.margin, -1, np.where(fraction > 1 - self.margin, 1, 0))
        steps = np.where((cells + steps < 0) | (cells + steps >= self.intervals), 0, steps)
        moved = cells[:, None, :] + np.eye(self.shape[1])[None] * steps[:, None, :]  # one step per direction
        keys = self._keys(np.concatenate([cells[:, None, :], moved], axis=1))
        return np.where(np.concatenate([np.ones((self.shape[0], 1)), steps != 0], axis=1) > 0, keys, -1)

    def candidates(self, position: np.ndarray) -> np.ndarray:
        """The distinct rows sharing a probed bucket with one query."""
        found = []
        for table, keys in enumerate(self.probes(position)):
            keys = np.unique(keys[keys >= 0])
            starts = np.searchsorted(self.keys[table], keys, side="left")
            ends = np.searchsorted(self.keys[table], keys, side="right")
            found += [self.ids[table][s:e] for s, e in zip(starts, ends, strict=True) if e > s]
        return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)

    def search_vectors(self, queries: np.ndarray, vectors: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (Q, count): the best ``count`` candidates of each query by their exact inner
        product with ``vectors`` (the stored rows), best first, as FAISS's ``search`` answers; a query with
        fewer candidates has rows -1 and scores -inf in the places left."""
        found = np.full((len(queries), count), -1, dtype=np.int64)
        best = np.full((len(queries), count), -np.inf, dtype=np.float32)
        for i, (query, position) in enumerate(zip(queries, self._positions(queries), strict=True)):
            rows = self.candidates(position)
            scores = vectors[rows].astype(np.float32, copy=False) @ query
            if len(rows) > count:
                kept = np.argpartition(-scores, count - 1)[:count]
                rows, scores = rows[kept], scores[kept]
            order = np.argsort(-scores, kind="stable")
            found[i, : len(rows)], best[i, : len(rows)] = rows[order], scores[order]
        return best, found

    def to_bytes(self) -> bytes:
        """The whole index as one ``.npz`` blob."""
        if self.edges is None:
            raise RetrievalError("lsh_buckets: an untrained index cannot be saved")
        buffer = io.BytesIO()
        tables = {f"keys{t}": k for t, k in enumerate(self.keys)} | {f"ids{t}": i for t, i in enumerate(self.ids)}
        settings = np.array([self.dim, *self.shape, self.intervals, self.ntotal], dtype=np.int64)
        margin = np.array([self.margin])
        arrays: dict[str, np.ndarray] = {
            "settings": settings,
            "margin": margin,
            "projections": self.projections,
            "edges": self.edges,
            **tables,
        }
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types the keywords as its options
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> BucketLSH:
        with np.load(io.BytesIO(blob)) as saved:
            dim, tables, directions, intervals, ntotal = (int(v) for v in saved["settings"])
            index = cls(dim, tables, directions, intervals, float(saved["margin"][0]))
            index.projections, index.edges = saved["projections"], saved["edges"]
            index.keys = [saved[f"keys{t}"] for t in range(tables)]
            index.ids = [saved[f"ids{t}"] for t in range(tables)]
        index.ntotal = ntotal
        return index
