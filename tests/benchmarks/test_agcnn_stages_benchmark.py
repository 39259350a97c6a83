"""The AG-CNN staged benchmark runs its three stages end to end on a small IDX set and reports every branch."""

import json

from tests.benchmarks import bench, run_in_root
from tests.benchmarks.test_retrieval_benchmark import write_idx

BENCH = bench("agcnn_stages")


def test_trains_three_stages_and_reports_each_branch(tmp_path):
    write_idx(tmp_path)
    out = tmp_path / "records.jsonl"
    result = run_in_root(
        [*BENCH, "--quick", "--fashion-mnist", str(tmp_path), "--workdir", str(tmp_path / "runs"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    branches, summary = records[:-1], records[-1]
    assert [r["branch"] for r in branches] == ["global", "local", "fusion"]
    assert all(0 <= r["test_auc"] <= 1 and r["stage_epochs"] == [1, 1, 1] for r in branches)
    fusion, global_ = branches[2]["test_auc"], branches[0]["test_auc"]
    assert summary["fusion_at_least_global"] == (fusion >= global_)
    assert sorted(p.name for p in (tmp_path / "runs" / "agcnn-cluttered").glob("stage*") if p.is_dir()) == [
        "stage1-global",
        "stage2-local",
        "stage3-fusion",
    ]
    full = [dict(r, quick=False) for r in branches]  # the table shows full runs only
    out.write_text("".join(json.dumps(r) + "\n" for r in full))
    table = run_in_root([*BENCH, "--table", str(out)], capture_output=True, text=True).stdout
    assert f"| fusion | {fusion:.4f} |" in table and "Measured " in table
