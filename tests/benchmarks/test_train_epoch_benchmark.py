"""The training-step benchmark runs end to end on a tiny model and reports consistent figures."""

import json

from tests.benchmarks import bench, run_in_root

BENCH = bench("train_epoch")


def test_reports_steps_epoch_and_ratios_to_the_baseline(tmp_path):
    out = tmp_path / "records.jsonl"
    result = run_in_root(
        [
            *BENCH,
            "--model",
            "attn_vgg_tiny",
            "--size",
            "32",
            "--steps",
            "2",
            "--batch",
            "8",
            "--epoch-images",
            "100",
            "--variants",
            "fp32,channels_last",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    fp32, channels_last, summary = lines
    assert (fp32["variant"], channels_last["variant"]) == ("fp32", "channels_last")
    # both are rounded in the record: agree to 1%
    assert abs(fp32["train_img_per_s"] * fp32["train_step_s"] / 8 - 1) < 0.01
    # 80 training images -> 10 steps, 20 validation images -> 3 steps
    assert abs(fp32["epoch_s"] - (10 * fp32["train_step_s"] + 3 * fp32["val_step_s"])) <= 0.051
    assert summary["train_speedup"]["fp32"] == 1.0
    expected = fp32["train_step_s"] / channels_last["train_step_s"]
    assert abs(summary["train_speedup"]["channels_last"] / expected - 1) < 0.01
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
