"""The export benchmark times both runtimes on the same model and checks that they agree."""

import json

from tests.benchmarks import bench, run_in_root

BENCH = bench("export")


def test_reports_both_runtimes_their_ratio_and_agreement(tmp_path):
    out = tmp_path / "export.jsonl"
    command = [*BENCH, "--models", "demo", "--batches", "1,3", "--rounds", "1", "--out", str(out)]
    result = run_in_root(command, capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["model"], r["batch"]) for r in records] == [("demo", 1), ("demo", 3)]
    for r in records:
        assert r["torch_img_per_s"] > 0 and r["onnxruntime_img_per_s"] > 0
        assert r["ratio"] == round(r["onnxruntime_img_per_s"] / r["torch_img_per_s"], 3)
        assert r["max_logit_difference"] < 1e-4 and isinstance(r["native_bf16"], bool)
    table = run_in_root([*BENCH, "--table", str(out)], capture_output=True, text=True, check=True).stdout
    assert table.startswith("| model | input | batch |") and table.count("| demo (attn_vgg_tiny) |") == 2
