"""The layer benchmark runs end to end at a tiny size and its records are sound."""

import json

from tests.benchmarks import bench, run_in_root

BENCH = bench("layers")


def test_prints_one_sound_record_per_layer_and_writes_the_same_file(tmp_path):
    out = tmp_path / "results" / "layers.jsonl"
    command = [
        *BENCH,
        "--batch",
        "2",
        "--channels",
        "16",
        "--size",
        "10",
        "--kernel",
        "5",
        "--heads",
        "2",
        "--repeats",
        "2",
        "--out",
        str(out),
    ]
    result = run_in_root(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["layer"] for r in records] == [
        "grid",
        "se",
        "se_plain",
        "cbam",
        "cbam_plain",
        "global",
        "local_naive",
        "local",
    ]
    assert out.read_text().splitlines() == result.stdout.splitlines()
    for record in records:
        assert record["fwd_bwd_ms_q1"] <= record["fwd_bwd_ms_median"] <= record["fwd_bwd_ms_q3"]
        assert record["peak_mem_mb"] >= 0 and record["saved_for_backward_mb"] > 0
        assert record["params"] > 0 and record["batch"] == 2 and record["device"] == "cpu"
    by_name = {r["layer"]: r for r in records}
    for name in ("se", "cbam"):
        ours, plain = by_name[name], by_name[f"{name}_plain"]
        assert ours["baseline"] == f"{name}_plain" and ours["params"] == plain["params"]
        assert ours["max_abs_diff_vs_plain"] < 1e-6  # the plain formula on the same weights
        assert ours["time_ratio_vs_plain"] == round(ours["fwd_bwd_ms_median"] / plain["fwd_bwd_ms_median"], 3)
    local = records[-1]
    assert local["baseline"] == "local_naive"
    assert local["max_abs_diff_vs_naive"] < 1e-5  # the baseline computes the same thing
    assert local["saved_ratio_vs_naive"] < 0.5
    assert local["time_ratio_vs_naive"] == round(local["fwd_bwd_ms_median"] / records[-2]["fwd_bwd_ms_median"], 3)


def test_an_unknown_layer_is_refused_by_name():
    result = run_in_root([*BENCH, "--layers", "nonlocal"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice: 'nonlocal'" in result.stderr
