"""A similarity index over embeddings: FAISS search plus the rows it refers to, on disk as one folder.

Kinds (cosine similarity: embeddings are L2-normalised, so inner product):

- ``flat``: exact search over every vector;
- ``ivf``: an inverted file of ``nlist`` k-means cells (trained on at most 64 points a cell), ``nprobe``
  of them searched;
- ``hnsw``: a navigable small-world graph of ``M`` links, ``ef_search`` candidates;
- ``lsh``: random-rotation hyperplane hashing to ``nbits`` bits, Hamming ranking (sign random
  projections, Charikar 2002);
- ``lsh_buckets``: p-stable bucket hashing (Datar et al. 2004): ``tables`` tables of ``directions``
  random directions from U[-1, 1]^d, each projection quantised into ``intervals`` intervals,
  multi-probe across edges nearer than ``margin`` (``attnscope.retrieval.lsh``).

With ``fp16`` the flat, IVF and HNSW indexes keep their vectors as float16
(scalar quantiser), half the memory. Whatever the kind, the returned neighbours
are ranked and scored by their exact cosine similarity with the stored vectors: flat, IVF and HNSW
compute it themselves, and ``lsh_buckets`` scores every row sharing a probed bucket, so their scores are
returned as they are, with no second pass; ``lsh``, whose Hamming ranking is coarse, first gathers
``rerank`` times more candidates, then scores them exactly.

A saved index is a folder: ``index.json`` (kind, sizes, embedding settings, the
run and the fingerprint of its weights), ``index.faiss``, ``vectors.npy``,
``rows.csv``, and ``pca.npz`` / ``thumbs.npy`` where there are some (``lsh_buckets`` keeps its
tables in ``index.lsh.npz`` instead of ``index.faiss``); an index with a re-ranker also holds
``tokens.npy`` and ``reranker.safetensors`` (``attnscope.retrieval.rerank``). It is
written whole into a sibling folder, then renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from attnscope.errors import ConfigError, RetrievalError
from attnscope.fileio import atomic_directory, file_sha256, read_marker, write_marker
from attnscope.names import FRACTION_INDEX_PARAMS, INDEX_KINDS, INDEX_PARAMS
from attnscope.registry import Registry
from attnscope.retrieval.apart import Apart, RowKeys
from attnscope.retrieval.embed import PCA, EmbeddingConfig
from attnscope.retrieval.lsh import BucketLSH
from attnscope.retrieval.rerank import CrossAttentionReRanker

log = logging.getLogger(__name__)

FORMAT = 1
# FAISS warns above 256 training points per k-means cell; 64 keep the cells sound and the build quick
TRAIN_POINTS_PER_CELL = 64
ROW_FIELDS = ("id", "label", "path", "source", "group", "digest")


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
        raise ConfigError("retrieval needs faiss: pip install faiss-cpu") from error
    return faiss


def _storage(fp16: bool) -> str:
    return "SQfp16" if fp16 else "Flat"


def _flat(dim: int, params: dict, fp16: bool):
    faiss = _faiss()
    return faiss.index_factory(dim, _storage(fp16), faiss.METRIC_INNER_PRODUCT)


def _ivf(dim: int, params: dict, fp16: bool):
    faiss = _faiss()
    return faiss.index_factory(dim, f"IVF{params['nlist']},{_storage(fp16)}", faiss.METRIC_INNER_PRODUCT)


def _hnsw(dim: int, params: dict, fp16: bool):
    faiss = _faiss()
    index = faiss.index_factory(dim, f"HNSW{params['M']}" + (",SQfp16" if fp16 else ""), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params["ef_construction"]
    return index


def _lsh(dim: int, params: dict, fp16: bool):
    return _faiss().IndexLSH(dim, params["nbits"], True, False)  # rotate the data: hyperplanes in every direction


def _lsh_buckets(dim: int, params: dict, fp16: bool):
    return BucketLSH(dim, params["tables"], params["directions"], params["intervals"], params["margin"])


@dataclass(frozen=True)
class IndexKind:
    """An index kind: how to build its empty index (``(dim, params, fp16) -> index``), its parameters with
    their defaults, and whether its own ranking is coarse (``rerank`` x k candidates are then scored)."""

    build: Callable[[int, dict, bool], Any]
    defaults: dict[str, int | float]
    reranked: bool = False


KINDS = Registry[IndexKind](
    "index kind",
    {
        "flat": IndexKind(_flat, INDEX_PARAMS["flat"]),
        "ivf": IndexKind(_ivf, INDEX_PARAMS["ivf"]),
        "hnsw": IndexKind(_hnsw, INDEX_PARAMS["hnsw"]),
        "lsh": IndexKind(_lsh, INDEX_PARAMS["lsh"], reranked=True),
        # attnscope's own (attnscope.retrieval.lsh): FAISS has no p-stable buckets
        "lsh_buckets": IndexKind(_lsh_buckets, INDEX_PARAMS["lsh_buckets"], reranked=True),
    },
    options=lambda kind: list(kind.defaults),
    listed=INDEX_KINDS,
    option_word="parameter",
)


def resolve_params(kind: str, dim: int, count: int, params: dict | None) -> dict:
    """The kind's parameters with defaults filled in for this size of gallery; unknown ones refused."""
    given = dict(params or {})
    KINDS.check_options(kind, given)
    resolved = {**KINDS.get(kind).defaults, **given}
    if kind == "ivf" and not resolved["nlist"]:
        # FAISS's guideline: 4-16 sqrt(N) cells, and at least 39 training points per cell
        resolved["nlist"] = max(1, min(int(4 * math.sqrt(count)), count // 39))
    if kind == "lsh" and not resolved["nbits"]:
        resolved["nbits"] = 4 * dim
    for name, value in resolved.items():
        if name in FRACTION_INDEX_PARAMS:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 0.5:
                raise ConfigError(f"index parameter {name}={value!r} must be a number in [0, 0.5)")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"index parameter {name}={value!r} must be a positive integer")
    return resolved


def build_faiss(kind: str, dim: int, params: dict, fp16: bool = False):
    """An empty index of ``kind`` for ``dim``-d vectors (untrained where the kind needs training), its
    search-time parameters set."""
    return apply_search_params(KINDS.get(kind).build(dim, params, fp16), kind, params)


def apply_search_params(faiss_index, kind: str, params: dict):
    """Set the search-time parameters (IVF ``nprobe``, HNSW ``ef_search``) that change no stored data."""
    if kind == "ivf":
        faiss_index.nprobe = params["nprobe"]
    elif kind == "hnsw":
        faiss_index.hnsw.efSearch = params["ef_search"]
    elif kind == "lsh_buckets":
        faiss_index.margin = float(params["margin"])
    return faiss_index


def training_sample(data: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """At most ``size`` rows of ``data``, drawn without replacement (seeded): k-means needs no more."""
    if len(data) <= size:
        return data
    chosen = np.sort(np.random.default_rng(seed).choice(len(data), size, replace=False))
    return data[chosen]


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


@dataclass
class SimilarityIndex:
    """FAISS index, stored vectors and the rows they come from, plus what made them (``meta``)."""

    kind: str
    params: dict
    embedding: EmbeddingConfig
    meta: dict
    faiss_index: Any  # a faiss.Index (faiss ships no type information), or a BucketLSH
    vectors: np.ndarray
    rows: list[dict] = field(default_factory=list)
    pca: PCA | None = None
    thumbs: np.ndarray | None = None
    tokens: np.ndarray | None = None  # (N, T, C) float16, with a re-ranker
    reranker: CrossAttentionReRanker | None = None
    _keys: RowKeys | None = field(default=None, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def create(
        cls,
        kind: str,
        vectors: np.ndarray,
        rows: list[dict],
        embedding: EmbeddingConfig,
        meta: dict,
        params: dict | None = None,
        pca: PCA | None = None,
        thumbs: np.ndarray | None = None,
    ) -> SimilarityIndex:
        """Build an index of ``vectors`` (N, D), training it on them where the kind needs it.

        A float16 embedding (``embedding.dtype``) is also searched by a float16 FAISS index.
        """
        fp16 = embedding.dtype == "float16"
        if len(vectors) != len(rows):
            raise ConfigError(f"{len(vectors)} vectors for {len(rows)} rows")
        if len(vectors) == 0:
            raise ConfigError("an index needs at least one vector")
        params = resolve_params(kind, vectors.shape[1], len(vectors), params)
        index = build_faiss(kind, vectors.shape[1], params, fp16)
        data = _as_float32(vectors)
        if not index.is_trained:
            if kind == "ivf" and len(data) < params["nlist"]:
                raise ConfigError(
                    f"ivf with nlist={params['nlist']} needs at least that many vectors to train, "
                    f"got {len(data)}; lower nlist or use kind flat"
                )
            index.train(training_sample(data, TRAIN_POINTS_PER_CELL * params["nlist"]) if kind == "ivf" else data)
        index.add(data)
        stored = vectors.astype(np.float16 if embedding.dtype == "float16" else np.float32)
        meta = {**meta, "fp16_index": fp16}
        return cls(kind, params, embedding, meta, index, stored, list(rows), pca, thumbs)

    def reduce(self, vectors: np.ndarray) -> np.ndarray:
        """Raw embeddings as this index stores them: through its PCA, if it has one."""
        return self.pca.apply(vectors) if self.pca is not None else vectors

    def set_search(self, **params: float) -> None:
        """Change search-time parameters (IVF ``nprobe``, HNSW ``ef_search``, ``lsh_buckets``'s ``margin``)
        of the built index."""
        self.params.update(params)
        apply_search_params(self.faiss_index, self.kind, self.params)

    def add(
        self, vectors: np.ndarray, rows: list[dict], thumbs: np.ndarray | None = None, tokens: np.ndarray | None = None
    ) -> None:
        """Append vectors (already reduced like the gallery's) and their rows (and their re-ranker tokens, when
        the index has a re-ranker); trained quantisers and the re-ranker are kept."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise RetrievalError(f"cannot add {vectors.shape[-1]}-d vectors to an index of {self.dim}-d vectors")
        if (thumbs is None) != (self.thumbs is None):
            raise RetrievalError("thumbnails must be given for every row or for none (as when the index was built)")
        if (tokens is None) != (self.tokens is None):
            raise RetrievalError("re-ranker tokens must be given exactly when the index has a re-ranker")
        if tokens is not None and self.tokens is not None:
            self.tokens = np.concatenate([self.tokens, tokens.astype(self.tokens.dtype)])
        self.faiss_index.add(_as_float32(vectors))
        self.vectors = np.concatenate([self.vectors, vectors.astype(self.vectors.dtype)])
        self.rows.extend(rows)
        self._keys = None
        if thumbs is not None and self.thumbs is not None:
            self.thumbs = np.concatenate([self.thumbs, thumbs])

    def row_keys(self) -> RowKeys:
        """The rows' digests and groups, counted once (until rows are added)."""
        if self._keys is None:
            self._keys = RowKeys(self.rows)
        return self._keys

    def search(
        self, queries: np.ndarray, k: int, apart: Sequence[Apart] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(positions (Q, k), cosine similarities (Q, k)) of each query's nearest rows, best first.

        Fewer than ``k`` rows in the index: the missing places hold position -1 and similarity NaN.
        ``apart``, one per query: rows that are that query's image or of its patient are left out
        (:mod:`attnscope.retrieval.apart`).
        """
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise RetrievalError(
                f"queries are {queries.shape[-1]}-d but the index holds {self.dim}-d vectors: "
                "they come from another model or embedding settings"
            )
        if k < 1:
            raise ConfigError(f"k={k} must be at least 1")
        if apart is not None:
            apart = [self.row_keys().resolve(one) for one in apart]
        wanted = k + (self.row_keys().extra(apart) if apart else 0)
        coarse = KINDS.get(self.kind).reranked
        candidates = min(len(self), wanted * (self.params["rerank"] if coarse else 1))
        if self.kind == "lsh_buckets":  # its candidates come scored exactly, best first
            scores, found = self.faiss_index.search_vectors(_as_float32(queries), self.vectors, candidates)
        else:
            scores, found = self.faiss_index.search(_as_float32(queries), candidates)
        if apart:
            found = self.row_keys().set_apart(found, apart)
        if self.kind == "lsh":  # Hamming ranking is coarse: the candidates are scored exactly
            return rerank(queries, self.vectors, found, k)
        return first_k(found, scores, k)  # flat, IVF, HNSW and the bucket hash scored the stored vectors

    def attach_reranker(self, reranker: CrossAttentionReRanker, tokens: np.ndarray, meta: dict) -> None:
        """Keep ``reranker`` and the tokens (N, T, C) of every indexed row with the index."""
        if len(tokens) != len(self) or tokens.shape[1:] != (reranker.tokens, reranker.channels):
            raise RetrievalError(
                f"re-ranker tokens {tokens.shape} do not fit {len(self)} rows and a re-ranker of "
                f"{reranker.tokens} tokens x {reranker.channels} channels"
            )
        self.reranker, self.tokens = reranker, tokens.astype(np.float16)
        self.meta["reranker"] = {**meta, **reranker.architecture()}

    def index_bytes(self) -> bytes:
        """The search structure as stored on disk (``index.faiss`` or ``index.lsh.npz``)."""
        if self.kind == "lsh_buckets":
            return self.faiss_index.to_bytes()
        return _faiss().serialize_index(self.faiss_index).tobytes()

    def save(self, path: str | Path, replace: bool = False) -> Path:
        """Write the index folder at ``path``; with ``replace``, an index already there is replaced once the
        new one is whole. Anything else at ``path`` (a run, a user's folder) is never replaced."""
        if replace and read_marker(path) is None and _is_index_folder(Path(path)):
            write_marker(path, "index")  # an index written before folders carried markers
        header = {
            "format": FORMAT,
            "kind": self.kind,
            "params": self.params,
            "dim": self.dim,
            "count": len(self),
            "embedding": self.embedding.to_dict(),
            **self.meta,
        }
        hint = "pass --force to replace it, or --add to add images to it"
        with atomic_directory(path, "index", replace=replace, hint=hint) as folder:
            (folder / index_file(self.kind)).write_bytes(self.index_bytes())
            np.save(folder / "vectors.npy", self.vectors)
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({name: row.get(name, "") for name in ROW_FIELDS} for row in self.rows)
            (folder / "rows.csv").write_text(buffer.getvalue(), encoding="utf-8")
            if self.pca is not None:
                np.savez(folder / "pca.npz", mean=self.pca.mean, components=self.pca.components)
            if self.thumbs is not None:
                np.save(folder / "thumbs.npy", self.thumbs)
            if self.reranker is not None and self.tokens is not None:
                np.save(folder / "tokens.npy", self.tokens)
                save_file(
                    {k: v.contiguous() for k, v in self.reranker.state_dict().items()},
                    str(folder / "reranker.safetensors"),
                )
            # every part's checksum, so that a part changed or swapped afterwards is refused, not misread
            header["checksums"] = {part.name: file_sha256(part) for part in sorted(folder.iterdir()) if part.is_file()}
            (folder / "index.json").write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SimilarityIndex:
        """Read an index folder written by :meth:`save`, checking that its parts agree."""
        folder = Path(path)
        header = _read_header(folder)
        _check_checksums(folder, header)
        faiss_index, vectors, rows = _read_parts(folder, header)
        sizes = {
            "index.json": header["count"],
            index_file(header["kind"]): faiss_index.ntotal,
            "vectors.npy": len(vectors),
            "rows.csv": len(rows),
        }
        if len(set(sizes.values())) != 1 or vectors.shape[1] != header["dim"]:
            raise RetrievalError(f"{folder}: its parts disagree on the number of rows {sizes} or the size; rebuild it")
        pca = None
        if (folder / "pca.npz").is_file():
            with np.load(folder / "pca.npz") as saved:
                pca = PCA(saved["mean"], saved["components"])
        thumbs = _read_thumbs(folder, header["count"])
        tokens, reranker = _load_reranker(folder, header)
        meta = {
            key: value
            for key, value in header.items()
            if key not in ("format", "kind", "params", "dim", "count", "embedding", "checksums")
        }
        apply_search_params(faiss_index, header["kind"], header["params"])
        return cls(
            header["kind"],
            header["params"],
            EmbeddingConfig.from_dict(header["embedding"]),
            meta,
            faiss_index,
            vectors,
            rows,
            pca,
            thumbs,
            tokens,
            reranker,
        )


def _read_parts(folder: Path, header: dict) -> tuple[Any, np.ndarray, list[dict]]:
    """The search structure, the vectors and the rows of an index folder; a part that cannot be read is an
    error that says to rebuild."""
    try:
        blob = (folder / index_file(header["kind"])).read_bytes()
        faiss_index = (
            BucketLSH.from_bytes(blob)
            if header["kind"] == "lsh_buckets"
            else _faiss().deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        )
        vectors = np.load(folder / "vectors.npy")
        with open(folder / "rows.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, RuntimeError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise RetrievalError(f"{folder}: a part of the index cannot be read ({error}); rebuild it") from error
    return faiss_index, vectors, rows


def _check_checksums(folder: Path, header: dict) -> None:
    """Every part whose checksum ``index.json`` records must still have it (indexes written before checksums
    were recorded have none to check)."""
    recorded = header.get("checksums") or {}
    if not isinstance(recorded, dict):
        raise RetrievalError(f"{folder / 'index.json'}: its checksums are damaged; rebuild the index")
    for name, expected in sorted(recorded.items()):
        part = folder / str(name)
        if not part.is_file() or file_sha256(part) != expected:
            raise RetrievalError(
                f"{part}: missing or changed since the index was written (its SHA-256 differs from index.json's); "
                "rebuild the index"
            )


def _read_thumbs(folder: Path, count: int) -> np.ndarray | None:
    """The thumbnails, one uint8 (h, w[, c]) picture per row, or None where the index keeps none."""
    path = folder / "thumbs.npy"
    if not path.is_file():
        return None
    try:
        thumbs = np.load(path)
    except (OSError, ValueError) as error:
        raise RetrievalError(f"{path}: cannot be read ({error}); rebuild the index") from error
    if thumbs.dtype != np.uint8 or thumbs.ndim not in (3, 4) or len(thumbs) != count:
        raise RetrievalError(
            f"{path}: holds {thumbs.dtype} of shape {thumbs.shape}, not {count} uint8 thumbnails; rebuild the index"
        )
    return thumbs


def _load_reranker(folder: Path, header: dict) -> tuple[np.ndarray | None, CrossAttentionReRanker | None]:
    """The re-ranker and its tokens, where the index has one (``index.json``'s ``reranker``)."""
    described = header.get("reranker")
    if not described:
        return None, None
    try:
        tokens = np.load(folder / "tokens.npy")
        architecture = {key: int(described[key]) for key in ("channels", "tokens", "dim", "heads")}
        reranker = CrossAttentionReRanker(**architecture)
        reranker.load_state_dict(load_file(str(folder / "reranker.safetensors")))
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as error:
        raise RetrievalError(f"{folder}: its re-ranker cannot be read ({error}); rebuild the index") from error
    if len(tokens) != header["count"]:
        raise RetrievalError(f"{folder}: tokens.npy holds {len(tokens)} rows, the index {header['count']}; rebuild it")
    return tokens, reranker.eval()


def index_file(kind: str) -> str:
    """The file of an index folder that holds the search structure of ``kind``."""
    return "index.lsh.npz" if kind == "lsh_buckets" else "index.faiss"


def _is_index_folder(folder: Path) -> bool:
    try:
        return _read_header(folder).get("format") == FORMAT
    except RetrievalError:
        return False


def _read_header(folder: Path) -> dict:
    """``index.json`` of an index folder, checked to be one this attnscope reads."""
    header_path = folder / "index.json"
    if not header_path.is_file():
        raise RetrievalError(f"{folder} is not an attnscope index (no index.json); build one with attnscope index")
    try:
        header = json.loads(header_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RetrievalError(f"{header_path} is not valid JSON ({error.msg}); rebuild the index") from error
    except UnicodeDecodeError as error:
        raise RetrievalError(f"{header_path} is not UTF-8 text, so not an index's header; rebuild the index") from error
    if not isinstance(header, dict):
        raise RetrievalError(f"{header_path} is not a JSON object, so not an index's header; rebuild the index")
    if header.get("format") != FORMAT:
        raise RetrievalError(
            f"{folder} has index format {header.get('format')!r}; this attnscope reads format {FORMAT}: "
            "rebuild the index"
        )
    return dict(header)


def first_k(found: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` of each row's ranked candidates that are still there (position >= 0), in their order;
    places left over hold position -1 and similarity NaN.

    ``found`` as wide as ``k`` holds no set-apart row (none is fetched beyond ``k`` only when none matches), so
    its missing places can only be a search's, at the end: the last column tells whether any is missing."""
    tail = found[:, -1]
    if found.shape[1] == k and (bool(tail[0] >= 0) if len(tail) == 1 else bool((tail >= 0).all())):
        return found, scores
    valid = found >= 0
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # kept candidates first, in rank order
    found, scores, valid = (np.take_along_axis(a, order, axis=1) for a in (found, scores, valid))
    if found.shape[1] < k:
        pad = ((0, 0), (0, k - found.shape[1]))
        found, scores, valid = np.pad(found, pad, constant_values=-1), np.pad(scores, pad), np.pad(valid, pad)
    return np.where(valid, found, -1), np.where(valid, scores, np.nan).astype(np.float32)


def rerank(queries: np.ndarray, vectors: np.ndarray, found: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Score each query's candidate positions exactly (inner product) and keep the best ``k``, best first."""
    valid = found >= 0
    gathered = vectors[np.where(valid, found, 0)].astype(np.float32, copy=False)  # (Q, C, D): only these
    scores = np.where(valid, np.matmul(gathered, _as_float32(queries)[:, :, None])[..., 0], -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")
    found, scores = np.take_along_axis(found, order, axis=1), np.take_along_axis(scores, order, axis=1)
    return first_k(np.where(np.isfinite(scores), found, -1), scores, k)
