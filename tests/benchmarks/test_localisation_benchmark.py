"""The localisation benchmark runs end to end on a tiny setting and reports every method's scores."""

import json

from tests.benchmarks import bench, run_in_root

BENCH = bench("localisation")


def test_scores_every_method_and_checks_the_goals(tmp_path):
    out = tmp_path / "records.jsonl"
    result = run_in_root(
        [*BENCH, "--quick", "--settings", "lesions_supervised", "--images", "6", "--steps", "2", "--out", str(out)]
        + ["--methods", "default", "--workdir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    records, summary = lines[:-1], lines[-1]
    assert {r["method"] for r in records} == {
        "attention:pool3",
        "attention:pool4",
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "centre prior (no model)",
    }
    for record in records:
        assert record["setting"] == "lesions_supervised" and record["images"] == 6
        model_free = record["method"] == "centre prior (no model)"
        for name in ("pointing_game", "energy", "jaccard", *(() if model_free else ("deletion_auc", "insertion_auc"))):
            assert 0 <= record[name] <= 1
    best = max(r["jaccard"] for r in records if r["method"].startswith("attention:"))
    assert summary["goals"]["supervised_lesions_attention_jaccard"] == best
    assert summary["goals"]["jaccard_0.7_met"] == (best >= 0.7)
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    assert all(r["train_s"] > 0 for r in records)

    again = run_in_root(
        [*BENCH, "--quick", "--settings", "lesions_supervised", "--images", "4", "--steps", "2"]
        + ["--methods", "hirescam,occlusion", "--workdir", str(tmp_path / "runs"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    rescored = [json.loads(line) for line in again.stdout.strip().splitlines()][:-1]
    assert {r["method"] for r in rescored} == {"hirescam", "occlusion"}  # the prior stays beside the attention
    assert all(r["train_s"] is None and r["images"] == 4 for r in rescored)  # scored again, not retrained
    assert rescored[0]["val_auc"] == records[0]["val_auc"]
