"""The throughput benchmark runs end to end on tiny models and reports ratios that agree with its rates."""

import json

from tests.benchmarks import bench, run_in_root

BENCH = bench("throughput")


def test_reports_rates_per_variant_and_ratios_to_fp32(tmp_path):
    out = tmp_path / "records.jsonl"
    result = run_in_root(
        [
            *BENCH,
            "--models",
            "resnet_tiny",
            "--size",
            "32",
            "--batch",
            "4",
            "--steps",
            "2",
            "--variants",
            "fp32,channels_last,bf16",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    records, summary = lines[:-1], lines[-1]
    assert [r["variant"] for r in records] == ["fp32", "channels_last", "bf16"]
    base = records[0]
    for record in records:
        assert record["train_img_per_s"] > 0 and record["infer_img_per_s"] > 0
        ratio = summary["ratios"]["resnet_tiny"][record["variant"]]["train"]
        assert abs(ratio - record["train_img_per_s"] / base["train_img_per_s"]) < 0.01
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    refused = run_in_root([*BENCH, "--variants", "bf16,fp32"], capture_output=True, text=True)
    assert refused.returncode == 2 and "first variant must be fp32" in refused.stderr
