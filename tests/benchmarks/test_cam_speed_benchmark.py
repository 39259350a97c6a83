"""The CAM speed benchmark times each method beside a forward pass of the same images."""

import json

from tests.benchmarks import bench, run_in_root

BENCH = bench("cam_speed")


def test_reports_every_method_asked_with_its_cost_in_forward_passes(tmp_path):
    out = tmp_path / "cam_speed.jsonl"
    command = [*BENCH, "--models", "demo", "--methods", "attention,gradcam,scorecam", "--images", "2", "--rounds", "1"]
    result = run_in_root([*command, "--out", str(out)], capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["method"], r["images"]) for r in records] == [("attention", 2), ("gradcam", 2), ("scorecam", 1)]
    for r in records:
        assert r["images_per_s"] == round(r["images"] / r["seconds"], 3) and r["forwards_per_map"] > 0
        assert r["architecture"] == "attn_vgg_tiny" and r["image_size"] == 64 and isinstance(r["native_bf16"], bool)
    table = run_in_root([*BENCH, "--table", str(out)], capture_output=True, text=True, check=True).stdout
    assert table.startswith("| model | method | images/s |") and table.count("| demo (64 px) |") == 3
