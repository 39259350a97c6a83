"""The data-pipeline benchmark runs end to end on a few images and reports consistent figures."""

import json

from tests.benchmarks import bench, run_in_root

BENCH = bench("data_pipeline")


def test_reports_rates_and_ratios_that_agree(tmp_path):
    (tmp_path / "work").mkdir()
    result = run_in_root(
        [*BENCH, "--count", "40", "--workers", "1", "--rounds", "2", "--workdir", str(tmp_path / "work")]
        + ["--out", str(tmp_path / "out.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["images"] == 40 and record["output_size"] == 224
    for key in ("seed_style_img_per_s", "attnscope_cold_img_per_s", "attnscope_warm_img_per_s"):
        assert record[key] > 0
    ratio = record["attnscope_warm_img_per_s"] / record["seed_style_img_per_s"]
    assert abs(record["warm_vs_seed_style"] - ratio) <= 0.01  # the record's rates are rounded
    assert record["goals"]["cold_2x"] == (record["attnscope_cold_img_per_s"] >= 2 * record["seed_style_img_per_s"])
    assert len(record["warm_vs_seed_style_per_round"]) == record["rounds"] == 2
    assert min(record["warm_vs_seed_style_per_round"]) <= ratio + 0.01
    assert max(record["warm_vs_seed_style_per_round"]) >= ratio - 0.01  # the median lies between the rounds
    assert list((tmp_path / "work").iterdir()) == []  # the JPEGs and the cache were cleaned up
    table = run_in_root([*BENCH, "--table", str(tmp_path / "out.jsonl")], capture_output=True, text=True)
    assert f"| {record['attnscope_warm_img_per_s']:.0f} | {record['warm_vs_seed_style']:.2f} (rounds: " in table.stdout
