"""Retrieval quality on Fashion-MNIST and index speed on a million random vectors.

    python -m benchmarks.retrieval --out benchmarks/results/retrieval-cpu.jsonl
    python -m benchmarks.retrieval --part fashion_mnist --run RUN      # reuse a trained run
    python -m benchmarks.retrieval --part vectors --vectors 20000       # a quick look at the indexes
    python -m benchmarks.retrieval --table benchmarks/results/retrieval-cpu.jsonl   # README's tables

``fashion_mnist``: a model trained with the shipped recipe (``--config
fashion_mnist``) on ``attn_resnet_tiny`` (grid attention, so that there are maps
to pool with), unless ``--run`` names one. The 60,000 official training images
are the gallery, the 10,000 test images the queries, a neighbour is relevant
when it has the query's class. For each embedding (average+max pooling of
layer3 and layer4; the same plus attention pooling; each reduced to 128-d by
PCA) it reports mAP over the whole gallery and recall@1/5/10 (share of queries
with a same-class image among the first k), from an exact index.

``fashion_mnist_indexes``: the same comparison of index kinds as below on the
attention-pooled, PCA-128 embeddings of those 60,000 images (10,000 queries):
real embeddings have the structure that approximate search relies on.

``fashion_mnist_rerank``: the cross-attention re-ranker (Tan et al. 2021's re-ranking over a
global descriptor) trained on the 60,000 training images' own pairs, reordering the first 100
of each test query's exact neighbours under the attention-pooled PCA-128 embedding: mAP over
the whole gallery and recall@k before and after, in the same run, the re-ranker's training
time, and the latency of one query (embed, search, tokens, re-rank).

``vectors``: ``--vectors`` random unit 256-d vectors (default 1,000,000) and
1,000 random queries; for exact (flat), IVF, HNSW, LSH (sign random projections) and bucketed
p-stable LSH (``lsh_buckets``; ``--kinds`` picks some): build seconds, index
bytes, median latency of one query and per query in a batch of 1,000, and
recall@10 against exact search, with two search-time settings for IVF (nprobe)
and HNSW (ef_search). Random vectors have no structure to exploit,
so they are the hard case for approximate search.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from attnscope.engine.config import load_config
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.rundir import RunPaths, read_metrics_csv
from attnscope.names import INDEX_KINDS
from attnscope.retrieval import EmbeddingConfig, SimilarityIndex, embed, fit_pca
from attnscope.retrieval.embed import embed_images, embed_images_and_tokens
from attnscope.retrieval.metrics import average_precision, recall_at_k
from attnscope.retrieval.rerank import ReRankerOptions, rerank, train_reranker
from attnscope.training.train import train
from benchmarks.common import add_result_arguments, append_records, choose, print_table, provenance, run_facts

PARTS = ("fashion_mnist", "fashion_mnist_indexes", "fashion_mnist_rerank", "vectors", "overhead")
RERANK_CANDIDATES = 100
KS = (1, 5, 10)
STAGES = ("layer3", "layer4")
SEARCH_SETTINGS = {
    "ivf": [{"nprobe": 16}, {"nprobe": 128}],
    "hnsw": [{"ef_search": 64}, {"ef_search": 512}],
    "lsh_buckets": [{"margin": 0.0}, {"margin": 0.2}],
}
KINDS = INDEX_KINDS


def trained_run(root: Path, epochs: int | None, quick: bool, directory: str | None) -> Path:
    """A run of the Fashion-MNIST recipe with grid attention."""
    run_dir = root / "fashion_mnist-grid"
    settings = ["model.name=attn_resnet_tiny", f"run_dir={run_dir}", "trainer.progress=false", "data.progress=false"]
    if directory:
        settings.append(f"data.source_options={json.dumps({'directory': str(directory), 'split': 'all'})}")
    if epochs:
        settings.append(f"trainer.epochs={epochs}")
    if quick:
        settings += ["model.options={stem: small, width: 8}", "trainer.epochs=1", "trainer.precision=32-true"]
    train(load_config("fashion_mnist", settings))
    return run_dir


def idx_loaders(run: Run, directory: str | None) -> tuple:
    """Loaders over every Fashion-MNIST training image (the gallery) and test image (the queries)."""
    options = {"directory": directory} if directory else {}
    return tuple(
        run.loader(DataSelection(source="idx", source_options={**options, "split": split}))
        for split in ("train", "test")
    )


def fashion_mnist(
    run_dir: Path | None, root: Path, epochs: int | None, quick: bool, directory: str | None
) -> list[dict]:
    """mAP and recall@k of each embedding, test images against the training images."""
    run_dir = run_dir or trained_run(root, epochs, quick, directory)
    run = Run.open(run_dir, progress=False)
    gallery_loader, query_loader = idx_loaders(run, directory)
    gallery_labels = gallery_loader.decoded.manifest.labels
    query_labels = query_loader.decoded.manifest.labels
    history = read_metrics_csv(RunPaths(run_dir).metrics)
    records = []
    for attention in (False, True):
        config = EmbeddingConfig(stages=STAGES, attention_pooling=attention)
        started = time.perf_counter()
        gallery = embed(run, gallery_loader, config)
        embed_seconds = time.perf_counter() - started
        queries = embed(run, query_loader, config)
        for pca_dim in (0, 128):
            pca = fit_pca(gallery.vectors, pca_dim) if pca_dim else None
            g = pca.apply(gallery.vectors) if pca else gallery.vectors
            q = pca.apply(queries.vectors) if pca else queries.vectors
            rows = [{"id": str(i)} for i in range(len(g))]
            index = SimilarityIndex.create("flat", g, rows, config, {})
            positions, _ = index.search(q, max(KS))
            recall = recall_at_k(gallery_labels[gallery.rows][positions], query_labels[queries.rows], KS)
            ap = average_precision(q, g, query_labels[queries.rows], gallery_labels[gallery.rows])
            record = {
                "benchmark": "retrieval",
                "part": "fashion_mnist",
                "run": str(run_dir),
                "model": run.config.model.name,
                "epochs": len(history),
                "stages": list(STAGES),
                "attention_pooling": attention,
                "pca_dim": pca_dim,
                "dim": int(g.shape[1]),
                "gallery": len(g),
                "queries": len(q),
                "map": round(float(np.nanmean(ap)), 4),
                **{f"recall@{k}": round(v, 4) for k, v in recall.items()},
                "gallery_embed_img_per_s": round(len(g) / embed_seconds, 1),
                **run_facts(),
            }
            print(json.dumps(record), flush=True)
            records.append(record)
    return records


def _median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def single_query_against_faiss(index: SimilarityIndex, queries: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Median milliseconds of one query through ``index.search`` and through the search structure alone
    (FAISS's ``search``, or the bucket hash's, asked for the candidates attnscope asks it for: ``k``, or
    ``rerank`` x ``k`` for the LSH kinds, which attnscope then scores exactly), timed in turn query by query
    so that a noisy machine slows both alike, each going first on every other query."""
    coarse = index.params.get("rerank", 1) if index.kind in ("lsh", "lsh_buckets") else 1
    candidates = min(len(index), k * coarse)

    def alone(query: np.ndarray) -> object:
        if index.kind == "lsh_buckets":
            return index.faiss_index.search_vectors(query, index.vectors, candidates)
        return index.faiss_index.search(query, candidates)

    timed: dict[str, list[float]] = {"ours": [], "alone": []}
    calls = {"ours": lambda single: index.search(single, k), "alone": alone}
    for number, query in enumerate(queries):
        single = np.ascontiguousarray(query[None], dtype=np.float32)
        # each query's first call meets its index lists cold and the second warm: the order alternates
        for name in ("ours", "alone") if number % 2 == 0 else ("alone", "ours"):
            started = time.perf_counter()
            calls[name](single)
            timed[name].append((time.perf_counter() - started) * 1000)
    return statistics.median(timed["ours"]), statistics.median(timed["alone"])


def unit_rows(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    data = rng.standard_normal((count, dim), dtype=np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def vectors(
    count: int, dim: int, queries_count: int, kinds: tuple[str, ...] = KINDS, part: str = "vectors"
) -> list[dict]:
    """Build time, size, latency (through attnscope and through the index alone) and recall@10 of each index
    kind on random unit vectors."""
    rng = np.random.default_rng(0)
    return compare_indexes(unit_rows(rng, count, dim), unit_rows(rng, queries_count, dim), {"part": part}, kinds)


def compare_indexes(data: np.ndarray, queries: np.ndarray, facts: dict, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """Each index kind on ``data``: build seconds, size, latency, recall@10 against exact search (``flat``,
    always built first: it is the truth the others are measured against)."""
    import faiss

    rows = [{}] * len(data)
    truth = None
    records = []
    for kind in ("flat", *(k for k in kinds if k != "flat")):
        started = time.perf_counter()
        index = SimilarityIndex.create(kind, data, rows, EmbeddingConfig(), {}, {})
        build = time.perf_counter() - started
        size_mb = len(index.index_bytes()) / 2**20
        for setting in SEARCH_SETTINGS.get(kind, [{}]):
            index.set_search(**setting)  # changes no stored data: the same index is searched again
            positions, _ = index.search(queries, 10)
            if truth is None:
                truth = positions
            recall = float(np.mean([len(set(p) & set(t)) / 10 for p, t in zip(positions, truth, strict=True)]))
            batch = queries[:1000]
            batch_ms = _median_ms(lambda index=index, batch=batch: index.search(batch, 10), 3) / len(batch)
            single_ms, alone_ms = single_query_against_faiss(index, queries[:200])
            record = {
                "benchmark": "retrieval",
                **facts,
                "kind": kind,
                "params": dict(index.params),
                "count": len(data),
                "dim": int(data.shape[1]),
                "queries": len(queries),
                "build_s": round(build, 2),
                "index_mb": round(size_mb, 1),
                "batch_ms_per_query": round(batch_ms, 4),
                "single_query_ms": round(single_ms, 3),
                "faiss_alone_single_query_ms": round(alone_ms, 3),
                "single_query_overhead": round(single_ms / alone_ms, 3),
                "recall@10": round(recall, 4),
                "faiss_threads": faiss.omp_get_max_threads(),
                **run_facts(),
            }
            print(json.dumps(record), flush=True)
            records.append(record)
        index = None  # free this kind's memory before the next is built
    return records


def fashion_mnist_indexes(run_dir: Path, directory: str | None, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """The index kinds on real embeddings: attention-pooled, PCA-128, training images against test images."""
    run = Run.open(run_dir, progress=False)
    config = EmbeddingConfig(stages=STAGES, attention_pooling=True)
    gallery_loader, query_loader = idx_loaders(run, directory)
    gallery, queries = embed(run, gallery_loader, config), embed(run, query_loader, config)
    pca = fit_pca(gallery.vectors, 128)
    return compare_indexes(
        pca.apply(gallery.vectors),
        pca.apply(queries.vectors),
        {"part": "fashion_mnist_indexes", "run": str(run_dir)},
        kinds,
    )


def latest_per_setting(records: list[dict]) -> list[dict]:
    """The last record of each (part, kind, parameters), in the order settings first appeared: a later run
    of some kinds replaces their rows and keeps the others'."""
    chosen: dict[tuple, dict] = {}
    for record in records:
        setting = {name: record.get(name) for name in ("kind", "params", "stages", "attention_pooling", "pca_dim")}
        chosen[(record["part"], json.dumps(setting, sort_keys=True))] = record  # a dict keeps the first position
    return list(chosen.values())


def fashion_mnist_rerank(run_dir: Path, directory: str | None, epochs: int, quick: bool) -> list[dict]:
    """mAP and recall@k of the embedding's ranking and of the same ranking re-ranked, and query latency."""
    run = Run.open(run_dir, progress=False)
    config = EmbeddingConfig(stages=STAGES, attention_pooling=True)
    gallery_loader, query_loader = idx_loaders(run, directory)
    gallery, queries = embed(run, gallery_loader, config, True), embed(run, query_loader, config, True)
    pca = fit_pca(gallery.vectors, 128)
    g, q = pca.apply(gallery.vectors), pca.apply(queries.vectors)
    gallery_tokens, query_tokens = gallery.tokens, queries.tokens
    assert gallery_tokens is not None and query_tokens is not None
    gallery_labels = gallery_loader.decoded.manifest.labels[gallery.rows]
    query_labels = query_loader.decoded.manifest.labels[queries.rows]
    options = ReRankerOptions(epochs=epochs, anchors=2000 if quick else 20000)
    started = time.perf_counter()
    model, trained = train_reranker(gallery_tokens, g, gallery_labels, options, progress=False)
    train_seconds = time.perf_counter() - started
    index = SimilarityIndex.create("flat", g, [{}] * len(g), config, {})
    positions, similarities = index.search(q, RERANK_CANDIDATES)
    started = time.perf_counter()
    reranked, _, _ = rerank(model, query_tokens, gallery_tokens, positions, similarities)
    rerank_ms = (time.perf_counter() - started) * 1000 / len(q)
    before = average_precision(q, g, query_labels, gallery_labels)
    after = average_precision(q, g, query_labels, gallery_labels, head=reranked)
    recall_before = recall_at_k(gallery_labels[positions[:, : max(KS)]], query_labels, KS)
    recall_after = recall_at_k(gallery_labels[reranked[:, : max(KS)]], query_labels, KS)
    single = single_query_ms(run, query_loader, config, pca, index, model, gallery_tokens)
    record = {
        "benchmark": "retrieval",
        "part": "fashion_mnist_rerank",
        "run": str(run_dir),
        "candidates": RERANK_CANDIDATES,
        "gallery": len(g),
        "queries": len(q),
        "map_embedding": round(float(np.nanmean(before)), 4),
        "map_reranked": round(float(np.nanmean(after)), 4),
        **{f"recall@{k}_embedding": round(v, 4) for k, v in recall_before.items()},
        **{f"recall@{k}_reranked": round(v, 4) for k, v in recall_after.items()},
        "reranker_train_s": round(train_seconds, 1),
        "reranker_pairs": trained["pairs"],
        "reranker_options": trained["options"],
        "rerank_ms_per_query_batched": round(rerank_ms, 3),
        **single,
        **run_facts(),
    }
    print(json.dumps(record), flush=True)
    return [record]


def single_query_ms(run, loader, config, pca, index, model, gallery_tokens) -> dict:
    """Median milliseconds of one query, image to answer: embed + search, and with the re-ranking
    (its tokens from the same forward pass) the time it adds."""
    batch = next(iter(loader))
    images, _ = run.transform(batch["image"][:1])
    network = run.model()
    plain, extra = [], []
    for _ in range(20):
        started = time.perf_counter()
        vector = pca.apply(embed_images(network, images, config).numpy())
        index.search(vector, RERANK_CANDIDATES)
        plain.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        vectors, tokens = embed_images_and_tokens(network, images, config)
        assert tokens is not None
        positions, similarities = index.search(pca.apply(vectors.numpy()), RERANK_CANDIDATES)
        rerank(model, tokens.half().numpy(), gallery_tokens, positions, similarities)
        extra.append((time.perf_counter() - started) * 1000 - plain[-1])
    return {
        "single_query_ms_embedding": round(statistics.median(plain), 2),
        "single_query_ms_rerank_added": round(statistics.median(extra), 2),
    }


def render_tables(records: list[dict]) -> str:
    records = latest_per_setting(records)
    lines = []
    fashion = [r for r in records if r["part"] == "fashion_mnist"]
    if fashion:
        lines += [
            "| embedding | PCA | size | mAP | recall@1 | recall@5 | recall@10 |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in fashion:
            pooling = "avg+max+attention" if r["attention_pooling"] else "avg+max"
            lines.append(
                f"| {pooling} ({', '.join(r['stages'])}) | {r['pca_dim'] or '-'} | {r['dim']} | {r['map']:.4f} | "
                f"{r['recall@1']:.4f} | {r['recall@5']:.4f} | {r['recall@10']:.4f} |"
            )
    reranked = [r for r in records if r["part"] == "fashion_mnist_rerank"]
    if reranked:
        r = reranked[-1]
        lines += [
            "",
            f"Re-ranking the first {r['candidates']} neighbours of each of {r['queries']:,} queries "
            f"({r['gallery']:,} gallery images; re-ranker trained in {r['reranker_train_s']:.0f} s on "
            f"{r['reranker_pairs']:,} pairs):",
            "",
            "| ranking | mAP | recall@1 | recall@5 | recall@10 | ms / query (one query, image to answer) |",
            "|---|---:|---:|---:|---:|---:|",
            f"| embedding (avg+max+attention, PCA 128) | {r['map_embedding']:.4f} | {r['recall@1_embedding']:.4f} | "
            f"{r['recall@5_embedding']:.4f} | {r['recall@10_embedding']:.4f} | {r['single_query_ms_embedding']:.1f} |",
            f"| + cross-attention re-ranker | {r['map_reranked']:.4f} | {r['recall@1_reranked']:.4f} | "
            f"{r['recall@5_reranked']:.4f} | {r['recall@10_reranked']:.4f} | "
            f"{r['single_query_ms_embedding'] + r['single_query_ms_rerank_added']:.1f} |",
        ]
    for part, what in (
        ("fashion_mnist_indexes", "Fashion-MNIST embeddings (attention-pooled, PCA-128)"),
        ("vectors", "random unit vectors"),
    ):
        chosen = [r for r in records if r["part"] == part]
        if not chosen:
            continue
        first = chosen[0]
        lines += [
            "",
            f"{what}: {first['count']:,} {first['dim']}-d vectors indexed, {first['queries']:,} queries, "
            f"{first['faiss_threads']} threads:",
            "",
            f"| index | parameters | build s | size MB | ms/query (batch of {min(first['queries'], 1000):,}) "
            "| ms (one query) | one query vs the index alone | recall@10 vs exact |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in chosen:
            params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
            overhead = f"{r['single_query_overhead']:.2f}x" if "single_query_overhead" in r else "not measured"
            lines.append(
                f"| {r['kind']} | {params} | {r['build_s']:.1f} | {r['index_mb']:,.0f} | "
                f"{r['batch_ms_per_query']:.3f} | {r['single_query_ms']:.2f} | {overhead} | {r['recall@10']:.3f} |"
            )
    lines += overhead_table([r for r in records if r["part"] == "overhead"])
    return "\n".join([*lines, "", provenance(records)]).strip()


def overhead_table(chosen: list[dict]) -> list[str]:
    """One query through attnscope's search against the same call on the search structure alone."""
    if not chosen:
        return []
    first = chosen[0]
    lines = [
        "",
        f"One query at a time through `SimilarityIndex.search` and through the search structure alone (FAISS's "
        f"`search`, or the bucket hash's, asked for the same candidates), in turn, query by query, median of "
        f"{min(first['queries'], 200)}; {first['count']:,} random {first['dim']}-d vectors:",
        "",
        "| index | parameters | attnscope ms | index alone ms | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for r in chosen:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(
            f"| {r['kind']} | {params} | {r['single_query_ms']:.3f} | {r['faiss_alone_single_query_ms']:.3f} "
            f"| {r['single_query_overhead']:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--run", type=Path, help="a trained Fashion-MNIST run to use (default: train one)")
    parser.add_argument("--epochs", type=int, help="epochs of the trained run (default: the recipe's)")
    parser.add_argument("--fashion-mnist", metavar="DIR", help="your copy of the IDX files (default: Debian's)")
    parser.add_argument("--vectors", type=int, default=1_000_000, help="random vectors indexed (default 1,000,000)")
    parser.add_argument(
        "--overhead-vectors", type=int, default=100_000, help="random vectors of the overhead part (default 100,000)"
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--reranker-epochs", type=int, default=3, help="epochs of the re-ranker (default 3)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"index kinds compared (flat always): {KINDS}")
    parser.add_argument("--quick", action="store_true", help="a tiny model for one epoch: checks the script runs")
    parser.add_argument("--workdir", help="keep the trained run here (default: a temporary folder)")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, render_tables):
        return
    parts = choose(parser, args.part, PARTS, "part")
    kinds = tuple(choose(parser, args.kinds, KINDS, "kind"))
    records = []
    with tempfile.TemporaryDirectory(prefix="attnscope-retrieval-") as scratch:
        root = Path(args.workdir or scratch)
        run_dir = args.run
        if "fashion_mnist" in parts:
            records += fashion_mnist(args.run, root, args.epochs, args.quick, args.fashion_mnist)
            run_dir = Path(records[-1]["run"])
        if "fashion_mnist_indexes" in parts or "fashion_mnist_rerank" in parts:
            if run_dir is None:
                parser.error("--part fashion_mnist_indexes/_rerank need --run RUN, or the fashion_mnist part before")
        if "fashion_mnist_indexes" in parts:
            records += fashion_mnist_indexes(run_dir, args.fashion_mnist, kinds)
        if "fashion_mnist_rerank" in parts:
            records += fashion_mnist_rerank(run_dir, args.fashion_mnist, args.reranker_epochs, args.quick)
    if "vectors" in parts:
        records += vectors(args.vectors, args.dim, args.queries, kinds)
    if "overhead" in parts:
        records += vectors(args.overhead_vectors, args.dim, args.queries, kinds, part="overhead")
    append_records(args.out, records)


if __name__ == "__main__":
    main()
