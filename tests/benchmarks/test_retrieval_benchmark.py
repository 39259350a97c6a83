"""The retrieval benchmark runs end to end on a small IDX set and a few thousand random vectors."""

import json
import pathlib

import numpy as np

from tests.benchmarks import bench, run_in_root
from tests.data.test_sources_arrays import idx_bytes

BENCH = bench("retrieval")


def write_idx(folder: pathlib.Path) -> None:
    """Fashion-MNIST-shaped files: 10 classes, each a bright square at its own place."""
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 300), ("t10k", 60)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 40, (count, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 5)
            images[i, 4 + 10 * row : 12 + 10 * row, 2 + 5 * col : 6 + 5 * col] = 230
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))


def test_reports_sound_retrieval_and_index_figures(tmp_path):
    write_idx(tmp_path)
    out = tmp_path / "records.jsonl"
    result = run_in_root(
        [
            *BENCH,
            "--quick",
            "--fashion-mnist",
            str(tmp_path),
            "--vectors",
            "2000",
            "--overhead-vectors",
            "1000",
            "--queries",
            "50",
            "--reranker-epochs",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    fashion = [r for r in records if r["part"] == "fashion_mnist"]
    assert [(r["attention_pooling"], r["pca_dim"]) for r in fashion] == [
        (False, 0),
        (False, 128),
        (True, 0),
        (True, 128),
    ]
    for r in fashion:
        assert r["gallery"] == 300 and r["queries"] == 60
        assert 0 < r["map"] <= 1 and r["recall@1"] <= r["recall@5"] <= r["recall@10"] <= 1
        assert r["map"] > 0.1  # above chance for 10 balanced classes, even after one epoch
    assert fashion[2]["dim"] == 3 * fashion[0]["dim"] // 2  # attention adds a third block per stage
    vectors = {(r["kind"], json.dumps(r["params"], sort_keys=True)): r for r in records if r["part"] == "vectors"}
    assert vectors[("flat", "{}")]["recall@10"] == 1.0
    ivf_all = next(r for r in vectors.values() if r["kind"] == "ivf" and r["params"]["nprobe"] >= r["params"]["nlist"])
    assert ivf_all["recall@10"] == 1.0  # every cell probed: exact
    on_embeddings = [r for r in records if r["part"] == "fashion_mnist_indexes"]
    kinds = ["flat", "ivf", "ivf", "hnsw", "hnsw", "lsh", "lsh_buckets", "lsh_buckets"]
    assert [r["kind"] for r in on_embeddings] == kinds
    no_margin, margin = on_embeddings[-2:]
    assert (no_margin["params"]["margin"], margin["params"]["margin"]) == (0.0, 0.2)
    assert margin["recall@10"] >= no_margin["recall@10"]  # more buckets probed: a superset of candidates
    assert all(r["count"] == 300 and r["queries"] == 60 and r["dim"] == 128 for r in on_embeddings)
    assert on_embeddings[0]["recall@10"] == 1.0 and on_embeddings[1]["recall@10"] == 1.0  # 7 cells, 16 probed
    reranked = next(r for r in records if r["part"] == "fashion_mnist_rerank")
    assert (reranked["gallery"], reranked["queries"], reranked["candidates"]) == (300, 60, 100)
    assert reranked["map_embedding"] == next(r["map"] for r in fashion if r["attention_pooling"] and r["pca_dim"])
    assert 0 < reranked["map_reranked"] <= 1 and reranked["single_query_ms_rerank_added"] > 0
    table = run_in_root([*BENCH, "--table", str(out)], capture_output=True, text=True)
    assert f"| {fashion[0]['map']:.4f} |" in table.stdout and "| flat | - |" in table.stdout
    assert f"| + cross-attention re-ranker | {reranked['map_reranked']:.4f} |" in table.stdout
    assert "Measured " in table.stdout and "by `python -m benchmarks.retrieval --quick" in table.stdout
    overhead = [r for r in records if r["part"] == "overhead"]
    assert [r["kind"] for r in overhead] == [r["kind"] for r in vectors.values()] and overhead[0]["count"] == 1000
    for r in overhead:  # one query through attnscope against the index alone, the ratio of the two medians
        rounding = 0.001 * (1 + r["single_query_overhead"]) / r["faiss_alone_single_query_ms"]  # ms kept to 3 places
        assert abs(r["single_query_overhead"] - r["single_query_ms"] / r["faiss_alone_single_query_ms"]) <= rounding
    row = f"| {overhead[0]['single_query_ms']:.3f} | {overhead[0]['faiss_alone_single_query_ms']:.3f} |"
    assert "through the search structure alone" in table.stdout and row in table.stdout
    rerun = dict(next(r for r in reversed(records) if r["part"] == "vectors"), build_s=123.4)  # a later run of one
    # setting replaces its row, keeps the others
    out.write_text(out.read_text() + json.dumps(rerun) + "\n")
    again = run_in_root([*BENCH, "--table", str(out)], capture_output=True, text=True).stdout
    assert again.count(f"| {rerun['kind']} |") == table.stdout.count(f"| {rerun['kind']} |") and "| 123.4 |" in again
