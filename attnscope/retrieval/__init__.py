"""Retrieval: embeddings of a trained model, a FAISS similarity index, and search by image."""

from attnscope.retrieval.embed import PCA, EmbeddingConfig, Embeddings, embed, embed_images, fit_pca
from attnscope.retrieval.index import KINDS, SimilarityIndex
from attnscope.retrieval.metrics import average_precision, recall_at_k
from attnscope.retrieval.service import (
    IndexOptions,
    IndexSummary,
    SearchOptions,
    build_index,
    open_index,
    result_rows,
    search_images,
    write_results_csv,
)

__all__ = [
    "KINDS",
    "PCA",
    "EmbeddingConfig",
    "Embeddings",
    "IndexOptions",
    "IndexSummary",
    "SearchOptions",
    "SimilarityIndex",
    "average_precision",
    "build_index",
    "embed",
    "embed_images",
    "fit_pca",
    "open_index",
    "recall_at_k",
    "result_rows",
    "search_images",
    "write_results_csv",
]
