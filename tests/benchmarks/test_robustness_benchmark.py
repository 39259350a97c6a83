"""The robustness script prints one record per kind and the README's table."""

import json

from tests.benchmarks import bench, run_in_root

BENCH = bench("robustness")


def test_one_record_per_kind_and_a_markdown_table(tmp_path):
    out = tmp_path / "robustness.jsonl"
    result = run_in_root(
        [*BENCH, "--scale", "0.01", "--kinds", "csv,option", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["kind"] for r in records] == ["csv", "option"] and all(r["traceback"] == 0 for r in records)
    assert records[0]["inputs"] == 2 * 15 and records[1]["inputs"] == 15  # 15 CSV files, read two ways
    table = run_in_root([*BENCH, "--table", str(out)], capture_output=True, text=True, check=True).stdout
    assert table.startswith("| input | tried |") and "| all | 45 |" in table
