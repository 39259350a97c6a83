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
        "random map (no model)",
    }
    for record in records:
        assert record["setting"] == "lesions_supervised" and record["images"] == 6
        model_free = record["method"].endswith("(no model)")
        assert record["seed"] == 0
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

    # the model-free maps alone, from the data as training split it: the same scores as beside the model
    alone = run_in_root(
        [*BENCH, "--quick", "--settings", "lesions_supervised", "--images", "6", "--baselines-only", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode == 0, alone.stderr
    baselines = {r["method"]: r for r in map(json.loads, alone.stdout.strip().splitlines())}
    for record in records:
        if record["method"].endswith("(no model)"):
            assert baselines[record["method"]] == {**record, "train_s": None}


def test_several_seeds_show_as_mean_and_standard_deviation_and_a_later_run_replaces_an_earlier_one():
    import statistics

    from benchmarks.localisation import render_table, settings_for

    assert "trainer.seed=2" in settings_for("lesions_anywhere", quick=True, seed=2)
    assert any("placement: anywhere" in s for s in settings_for("lesions_anywhere", quick=True))
    scores = {"images": 10, "energy": 0.5, "jaccard": 0.5, "deletion_auc": 0.1, "insertion_auc": 0.9}
    records = [
        {"setting": "lesions", "seed": seed, "method": "gradcam", "val_auc": auc, "pointing_game": pg, **scores}
        for seed, auc, pg in ((0, 0.80, 0.1), (1, 0.90, 0.5), (2, 0.85, 0.6), (0, 0.70, 0.2))  # seed 0 run again
    ]
    row = next(line for line in render_table(records).splitlines() if line.startswith("| lesions |"))
    auc = [0.90, 0.85, 0.70]  # the last record of each seed
    pointing = [0.5, 0.6, 0.2]
    assert f"| 3 | {statistics.mean(auc):.3f} ± {statistics.stdev(auc):.3f} AUC |" in row
    assert f"| {statistics.mean(pointing):.3f} ± {statistics.stdev(pointing):.3f} |" in row
    assert "| 0.500 ± 0.000 |" in row  # the same value every seed: no spread


def test_the_random_map_lands_where_chance_does():
    import torch

    from attnscope.explain.scores import localisation_scores
    from benchmarks.localisation import random_maps

    masks = torch.zeros(2000, 10, 10)
    masks[:, :2, :] = 1  # a fifth of every frame
    maps = random_maps(10, 2000, torch.Generator().manual_seed(0))
    scores = localisation_scores(maps, masks)
    assert abs(float(scores["pointing_game"].mean()) - 0.2) < 0.03  # the peak falls in the mask by chance
    assert abs(float(scores["energy"].mean()) - 0.2) < 0.01
