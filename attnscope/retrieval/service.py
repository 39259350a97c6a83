"""Build a similarity index from a trained run, and search it with new images.

The index remembers the run and the SHA-256 of the weights it embedded with;
a search (or an addition) with other weights is refused, because embeddings of
two models are not comparable even when their sizes agree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from attnscope._version import __version__
from attnscope.data.loader import BatchLoader
from attnscope.data.manifest import multilabel_text
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.rundir import RunLock
from attnscope.errors import RetrievalError
from attnscope.fileio import atomic_write, csv_text
from attnscope.outputs import NEIGHBOUR_COLUMNS, NEIGHBOURS, check_output_file
from attnscope.retrieval.apart import Apart, pixel_digest
from attnscope.retrieval.embed import EmbeddingConfig, Embeddings, embed, fit_pca
from attnscope.retrieval.index import SimilarityIndex
from attnscope.retrieval.rerank import ReRankerOptions, rerank, token_stage, train_reranker

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 64


def label_names(labels: np.ndarray, classes: list[str]) -> list[str]:
    """Class names of integer labels, or ``a|b`` for multi-hot rows (``b?`` for a label left out as uncertain)."""
    if labels.ndim == 2:
        return [multilabel_text(classes, row) for row in labels]
    return [classes[int(label)] for label in labels]


def thumbnails(images: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """uint8 (N, s, s, C) images shrunk (area-averaged) to at most ``size`` px a side."""
    if images.shape[1] <= size:
        return np.ascontiguousarray(images)
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    small = F.interpolate(tensor, size=(size, size), mode="area")
    return small.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def loader_rows(loader: BatchLoader, positions: np.ndarray, classes: list[str]) -> list[dict]:
    """The index rows (id, label, path, source, group, pixel digest) of manifest ``positions``."""
    manifest = loader.decoded.manifest
    labels = label_names(manifest.labels[positions], classes)
    return [
        {
            "id": manifest.ids[p],
            "label": label,
            "path": manifest.paths[p] if manifest.paths else "",
            "source": manifest.source,
            **asdict(loader_apart(loader, p)),
        }
        for p, label in zip(positions.tolist(), labels, strict=True)
    ]


def loader_apart(loader: BatchLoader, position: int) -> Apart:
    """The pixel digest and group (patient) of manifest row ``position``: what sets it apart in a search."""
    manifest = loader.decoded.manifest
    group = manifest.groups[position] if manifest.groups else None
    return Apart(pixel_digest(loader_images(loader, np.array([position]))[0]), group or "")


def loader_images(loader: BatchLoader, positions: np.ndarray) -> np.ndarray:
    """Decoded uint8 (N, S, S, C) pixels of manifest ``positions``."""
    decoded = loader.decoded
    return np.stack(
        [
            decoded.images[decoded.index[p]].reshape(decoded.images.shape[1], decoded.images.shape[2], -1)
            for p in positions.tolist()
        ]
    )


@dataclass(frozen=True)
class IndexOptions(DataSelection):
    """What to index (default: the run's training split, the images already diagnosed), where
    (default ``RUN/index``), with which FAISS ``kind`` and ``params``, and how to embed.

    The embedding fields (``stages``, ``attention_pooling``, ``taps``, ``pca_dim``, ``fp16``)
    left at their defaults with ``add`` mean "the index's own"; set, they must equal it.
    ``force`` replaces an index already at ``out``; nothing but an attnscope index is ever replaced.
    ``train_reranker`` trains a cross-attention re-ranker on the indexed images (``reranker``: its
    options) and keeps it, with every image's tokens, in the index folder.
    """

    split: str = "train"
    out: str | Path | None = None
    kind: str = "flat"
    params: Mapping[str, int] = field(default_factory=dict)
    stages: Sequence[str] = ()
    attention_pooling: bool = False
    taps: Sequence[str] = ()
    pca_dim: int = 0
    fp16: bool = False
    thumbnails: bool = True
    add: bool = False
    force: bool = False
    train_reranker: bool = False
    reranker: ReRankerOptions = field(default_factory=ReRankerOptions)

    def embedding(self) -> EmbeddingConfig:
        return EmbeddingConfig(
            stages=tuple(self.stages),
            attention_pooling=self.attention_pooling,
            taps=tuple(self.taps),
            pca_dim=self.pca_dim,
            dtype="float16" if self.fp16 else "float32",
        )

    def sets_embedding(self) -> bool:
        return self.embedding() != EmbeddingConfig()


@dataclass
class IndexSummary:
    """What :func:`build_index` did: images added, the index's size, vector width, kind and parameters."""

    out: Path
    added: int
    count: int
    dim: int
    kind: str
    params: dict
    skipped: int


def embed_gallery(
    run: Run, loader: BatchLoader, config: EmbeddingConfig, with_thumbnails: bool, with_tokens: bool = False
) -> tuple[Embeddings, list[dict], np.ndarray | None]:
    embedded = embed(run, loader, config, with_tokens)
    rows = loader_rows(loader, embedded.rows, run.classes)
    thumbs = thumbnails(loader_images(loader, embedded.rows)) if with_thumbnails else None
    return embedded, rows, thumbs


def check_same_model(index: SimilarityIndex, run: Run, index_path: Path) -> None:
    """Refuse a run whose weights are not those the index was built with."""
    fingerprint = run.weights_sha256()
    if fingerprint != index.meta.get("weights_sha256"):
        raise RetrievalError(
            f"{index_path} was built with {index.meta.get('model')} weights "
            f"{index.meta.get('weights_sha256', '?')[:12]} "
            f"from {index.meta.get('run')}, but {run.weights_path()} is {fingerprint[:12]} "
            f"({run.name}): embeddings of other weights cannot be compared; "
            f"rebuild the index with attnscope index {run.root} --out {index_path}"
        )


def build_index(run: Run, options: IndexOptions | None = None) -> IndexSummary:
    """Embed the selected images with the run's model and save them as a similarity index.

    The index's lock (``.NAME.lock`` beside it) is held throughout, so two processes adding to one index never
    lose one's images to the other's rename.

    Args:
        run: the opened run.
        options: which images (default: the training split), where (default ``RUN/index``), the FAISS kind
            and its parameters, the embedding; ``add`` extends the index there.

    Returns:
        Where the index is, how many images it holds and how many were added or skipped.

    Raises:
        RetrievalError: ``add`` to an index of other weights or embedding, or images already in it.
    """
    options = options or IndexOptions()
    out = Path(options.out) if options.out is not None else run.root / "index"
    out.parent.mkdir(parents=True, exist_ok=True)
    with RunLock.beside(out, "written", "choose another --out"):
        return _build_index(run, options, out)


def _build_index(run: Run, options: IndexOptions, out: Path) -> IndexSummary:
    existing = _existing_index(run, options, out) if options.add else None
    embedding = existing.embedding if existing is not None else options.embedding()
    loader = run.loader(options)
    with_thumbnails = options.thumbnails if existing is None else existing.thumbs is not None
    with_tokens = existing.reranker is not None if existing is not None else options.train_reranker
    embedded, rows, thumbs = embed_gallery(run, loader, embedding, with_thumbnails, with_tokens)
    described = options.source or f"{run.root} ({options.split} split)"
    if existing is not None:
        _refuse_duplicates(existing, rows, out)
        existing.add(existing.reduce(embedded.vectors), rows, thumbs, embedded.tokens)
        existing.meta["data"] = [*existing.meta.get("data", []), described]
        index = existing
    else:
        pca = fit_pca(embedded.vectors, embedding.pca_dim) if embedding.pca_dim else None
        vectors = pca.apply(embedded.vectors) if pca is not None else embedded.vectors
        meta = {
            "attnscope": __version__,
            "run": str(run.root.resolve()),
            "weights": run.weights,
            "weights_sha256": run.weights_sha256(),
            "model": run.name,
            "classes": run.classes,
            "raw_dim": int(embedded.vectors.shape[1]),
            "data": [described],
        }
        index = SimilarityIndex.create(
            kind=options.kind,
            vectors=vectors,
            rows=rows,
            embedding=embedding,
            meta=meta,
            params=dict(options.params),
            pca=pca,
            thumbs=thumbs,
        )
    if options.train_reranker and existing is None:
        _train_reranker(index, run, embedded, loader.decoded.manifest.labels[embedded.rows], options.reranker)
    elif options.train_reranker:
        raise RetrievalError("--train-reranker builds a new index; with --add the index's own re-ranker is kept")
    index.save(out, replace=options.add or options.force)
    skipped = len(loader.decoded.manifest.rejected)
    log.debug("indexed %d images (%d skipped) into %s", len(rows), skipped, out)
    return IndexSummary(out, len(rows), len(index), index.dim, index.kind, index.params, skipped)


def _train_reranker(
    index: SimilarityIndex, run: Run, embedded: Embeddings, labels: np.ndarray, options: ReRankerOptions
) -> None:
    """Train a re-ranker on the indexed images' tokens and labels and keep it with ``index``."""
    if embedded.tokens is None:
        raise RetrievalError("the gallery was embedded without the re-ranker's tokens")
    reranker, trained = train_reranker(embedded.tokens, index.vectors, labels, options, run.progress)
    index.attach_reranker(reranker, embedded.tokens, {**trained, "stage": token_stage(run.model(), index.embedding)})


def _existing_index(run: Run, options: IndexOptions, out: Path) -> SimilarityIndex:
    """The index at ``out`` that ``add`` extends, checked against the run and the embedding options."""
    if not (out / "index.json").is_file():
        raise RetrievalError(f"--add: {out} holds no index yet; build it first without --add")
    existing = SimilarityIndex.load(out)
    check_same_model(existing, run, out)
    if options.sets_embedding() and options.embedding() != existing.embedding:
        raise RetrievalError(
            f"--add: {out} embeds with {existing.embedding.to_dict()}, not "
            f"{options.embedding().to_dict()}; leave the embedding options out to reuse the index's"
        )
    return existing


def _refuse_duplicates(index: SimilarityIndex, rows: list[dict], out: Path) -> None:
    have = {(row["source"], row["id"]) for row in index.rows}
    again = [row["id"] for row in rows if (row["source"], row["id"]) in have]
    if again:
        raise RetrievalError(
            f"--add: {len(again)} image(s) of {rows[0]['source']} are already in {out} "
            f"(e.g. {again[:3]}); add only new images"
        )


@dataclass
class SearchResult:
    """Each query's id, path and thumbnail, and its neighbours (index positions, similarities)."""

    queries: list[dict]
    positions: np.ndarray
    similarities: np.ndarray
    query_thumbs: np.ndarray
    scores: np.ndarray | None = None  # the re-ranker's same-class probability, where it reordered


def open_index(
    index_path: str | Path, run: Run | None = None, run_dir: str | Path | None = None, progress: bool = True
) -> tuple[SimilarityIndex, Run]:
    """The index at ``index_path`` and the run it was built from (or ``run``/``run_dir``), checked to match."""
    index_path = Path(index_path)
    index = SimilarityIndex.load(index_path)
    if run is None:
        run_dir = run_dir or index.meta.get("run")
        if not run_dir or not Path(run_dir).is_dir():
            raise RetrievalError(
                f"{index_path} was built from run {run_dir!r}, which is not there; pass the run folder with --run"
            )
        run = Run.open(run_dir, index.meta.get("weights", "best"), progress=progress)
    check_same_model(index, run, index_path)
    return index, run


@dataclass(frozen=True)
class SearchOptions:
    """How to search: ``k`` neighbours; ``rerank_k``: the index's re-ranker reorders that many candidates of
    each query and the first ``k`` are kept; ``with_labels``: the queries' labels are known and shown;
    ``include_same``: keep neighbours that are the query itself or another image of its patient (set apart
    by default: :mod:`attnscope.retrieval.apart`)."""

    k: int = 10
    rerank_k: int = 0
    with_labels: bool = False
    include_same: bool = False


def search_loader(index: SimilarityIndex, run: Run, loader: BatchLoader, options: SearchOptions) -> SearchResult:
    """The nearest indexed images of every image of ``loader``."""
    k, rerank_k = options.k, options.rerank_k
    if rerank_k and (index.reranker is None or index.tokens is None):
        raise RetrievalError("this index has no re-ranker; build it with attnscope index --train-reranker")
    embedded = embed(run, loader, index.embedding, with_tokens=bool(rerank_k))
    apart = None if options.include_same else [loader_apart(loader, p) for p in embedded.rows.tolist()]
    scores = None
    if rerank_k:
        assert index.reranker is not None and index.tokens is not None and embedded.tokens is not None
        positions, similarities = index.search(index.reduce(embedded.vectors), max(k, rerank_k), apart)
        positions, similarities, scores = rerank(index.reranker, embedded.tokens, index.tokens, positions, similarities)
        positions, similarities, scores = positions[:, :k], similarities[:, :k], scores[:, :k]
    else:
        positions, similarities = index.search(index.reduce(embedded.vectors), k, apart)
    manifest = loader.decoded.manifest
    queries = [
        {"id": manifest.ids[p], "path": manifest.paths[p] if manifest.paths else ""} for p in embedded.rows.tolist()
    ]
    if options.with_labels:
        for query, label in zip(queries, label_names(manifest.labels[embedded.rows], run.classes), strict=True):
            query["label"] = label
    if manifest.rejected:
        log.warning(
            "%d query image(s) could not be read and were skipped: %s",
            len(manifest.rejected),
            "; ".join(f"{bad.id}: {bad.reason}" for bad in manifest.rejected[:3]),
        )
    return SearchResult(queries, positions, similarities, thumbnails(loader_images(loader, embedded.rows)), scores)


def search_images(
    index_path: str | Path,
    images: Sequence[str | Path],
    options: SearchOptions | None = None,
    run_dir: str | Path | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> tuple[SimilarityIndex, SearchResult]:
    """The nearest indexed images of each image file (or folder of them).

    Args:
        index_path: the index folder ``build_index`` wrote.
        images: image files or folders.
        options: neighbours per query, the re-ranker, whether to keep the query itself and its patient's
            other images (default: 10 neighbours, both set apart).
        run_dir: the run the index was built from, where it moved since.
        skip_bad: leave out unreadable images instead of stopping.
        progress: show progress bars.

    Returns:
        The index and each query's neighbours (positions into the index's rows, cosine similarities).

    Raises:
        RetrievalError: the folder holds no index, or the run's weights are not those it was built with.
    """
    index, run = open_index(index_path, run_dir=run_dir, progress=progress)
    with run:
        loader = run.loader(DataSelection(images=tuple(images), skip_bad=skip_bad))
        return index, search_loader(index, run, loader, options or SearchOptions())


def result_rows(index: SimilarityIndex, result: SearchResult) -> list[dict]:
    """One row per (query, rank): query, rank, neighbour id, label, similarity, path (and the re-ranker's
    score where it reordered)."""
    lines = []
    scores = result.scores if result.scores is not None else np.full(result.positions.shape, np.nan)
    for query, positions, similarities, reranked in zip(
        result.queries, result.positions, result.similarities, scores, strict=True
    ):
        for rank, (position, similarity) in enumerate(zip(positions.tolist(), similarities.tolist(), strict=True), 1):
            if position < 0:
                break
            row = index.rows[position]
            line = {
                "query": query["id"],
                "query_path": query["path"],
                "rank": rank,
                "id": row["id"],
                "label": row["label"],
                "similarity": round(float(similarity), 6),
                "path": row["path"],
            }
            if result.scores is not None:
                line["rerank_score"] = round(float(reranked[rank - 1]), 6)
            lines.append(line)
    return lines


def write_results_csv(lines: list[dict], out: str | Path, force: bool = False) -> Path:
    """The neighbours as a CSV, one row per (query, rank); ``force`` replaces a regular file attnscope did
    not write."""
    out = check_output_file(out, NEIGHBOURS, force)
    columns = list(NEIGHBOUR_COLUMNS)
    if lines and "rerank_score" in lines[0]:
        columns.append("rerank_score")
    return atomic_write(out, csv_text(columns, ([line[c] for c in columns] for line in lines)))
