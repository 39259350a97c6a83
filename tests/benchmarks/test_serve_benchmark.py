"""The serving benchmark starts `attnscope serve` twice, drives both, and reports rates, latency and memory."""

import json

from tests.benchmarks import bench, run_in_root

BENCH = bench("serve")


def test_reports_both_servers_at_each_level_and_the_memory_check(trained_run, tmp_path):
    out = tmp_path / "serve.jsonl"
    command = [*BENCH, "--run", str(trained_run), "--concurrency", "1,4", "--requests", "12", "--rounds", "1"]
    command += ["--memory-requests", "40", "--out", str(out)]
    result = run_in_root(command, capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    (compute,) = [r for r in records if r["kind"] == "compute"]
    assert compute["batch"] == 4 and compute["gain"] == round(
        compute["ms_per_image_batch_1"] / compute["ms_per_image_batched"], 2
    )
    loads = [r for r in records if r["kind"] == "load"]
    assert [(r["server"], r["concurrency"]) for r in loads] == [
        ("batched", 1),
        ("unbatched", 1),
        ("batched", 4),
        ("unbatched", 4),
    ]
    for r in loads:
        assert r["errors"] == 0 and r["requests_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["server_cpu_ms"] > 0 and r["client_cpu_ms"] > 0
    assert all(r["mean_batch"] == 1.0 for r in loads if r["server"] == "unbatched")
    for batched, unbatched in zip(loads[::2], loads[1::2], strict=True):
        assert batched["speedup"] == round(batched["requests_per_s"] / unbatched["requests_per_s"], 2)
    (memory,) = [r for r in records if r["kind"] == "memory"]
    assert memory["requests"] == 40 and memory["errors"] == 0 and memory["rss_after_mb"] > 100
    assert memory["growth_mb"] == round(memory["rss_after_mb"] - memory["rss_before_mb"], 1)
    table = run_in_root([*BENCH, "--table", str(out)], capture_output=True, text=True, check=True).stdout
    assert table.startswith("| server | concurrency |") and "Memory of the batched server over 40 more" in table
