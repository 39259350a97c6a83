"""The attention ablation runs end to end: equal budgets, sound records, both tables."""

import json

from attnscope.models import create_model
from benchmarks.common import short_cpu
from tests.benchmarks import bench, run_in_root
from tests.benchmarks.test_retrieval_benchmark import write_idx

BENCH = bench("ablation")


def test_every_attention_type_trains_with_the_same_recipe_and_is_scored(tmp_path):
    write_idx(tmp_path)
    out = tmp_path / "records.jsonl"
    result = run_in_root(
        [
            *BENCH,
            "--quick",
            "--fashion-mnist",
            str(tmp_path),
            "--settings",
            "fashion_mnist,cluttered,speed",
            "--attention",
            "none,cbam,grid",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    speed = [r for r in records if r["setting"] == "speed"]  # timed first, while nothing else runs
    assert [r["attention"] for r in speed] == ["none", "cbam", "grid"] and all(r["train_img_per_s"] > 0 for r in speed)
    records = [r for r in records if r["setting"] != "speed"]
    assert [(r["setting"], r["attention"]) for r in records] == [
        (s, a) for s in ("fashion_mnist", "cluttered") for a in ("none", "cbam", "grid")
    ]
    for r in records:
        assert r["epochs"] == 1 and r["s_per_epoch"] > 0 and 0 <= r["test_accuracy"] <= 1
        expected = create_model(r["model"], num_classes=10, in_chans=1, **r["model_options"])
        assert r["params"] == sum(p.numel() for p in expected.parameters())
    assert {r["attention"]: r["params"] for r in speed} == {
        r["attention"]: r["params"] for r in records if r["setting"] == "fashion_mnist"
    }
    fashion = [r for r in records if r["setting"] == "fashion_mnist"]
    assert all(r["test_images"] == 60 for r in fashion)  # the official test split of the IDX files
    maps = {r["attention"]: r["maps"] for r in records if r["setting"] == "cluttered"}
    assert list(maps["none"]) == ["gradcam"]  # no attention to score on a plain network
    assert sorted(maps["grid"]) == ["attention:attn_layer2", "attention:attn_layer3", "gradcam"]
    assert len([m for m in maps["cbam"] if m.startswith("attention:")]) == 4  # one spatial gate per block
    for scores in (s for methods in maps.values() for s in methods.values()):
        assert all(0 <= scores[name] <= 1 for name in ("pointing_game", "energy", "jaccard"))
    table = run_in_root([*BENCH, "--table", str(out)], capture_output=True, text=True).stdout
    assert "| none | " in table and "| 1 | 1 |" in table and "| 1.00x |" in table  # one epoch, one seed
    assert f"| {short_cpu(fashion[0])} |" in table  # s/epoch only compare on one CPU: the table names it
    assert "| cluttered | grid |" in table and "no spatial map" in table
    assert table.rstrip().endswith(
        f"by `python -m benchmarks.ablation --quick --fashion-mnist {tmp_path} --settings "
        f"fashion_mnist,cluttered,speed --attention none,cbam,grid --out {out}`."
    )
