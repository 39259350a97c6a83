"""The local-attention benchmark runs end to end on tiny sizes; its ratios agree with its rates."""

import argparse
import json

import pytest

from benchmarks import local_attention
from tests.benchmarks import bench, run_in_root


def ratio_of_rounded(numerator: float, denominator: float, digits: int, ratio_digits: int) -> tuple[float, float]:
    """The ratio of two figures rounded to `digits`, and how far the recorded ratio may sit from it.

    The benchmark divides the unrounded figures and rounds the ratio to `ratio_digits`, so the slack
    is the ratio's own rounding plus the ratio's sensitivity to each figure's rounding."""
    ratio = numerator / denominator
    half = 0.5 * 10**-digits
    return ratio, 0.5 * 10**-ratio_digits + ratio * (half / numerator + half / denominator) * 1.01


def test_layers_part_times_every_formulation_against_the_convolution(tmp_path):
    out = tmp_path / "records.jsonl"
    command = [*bench("local_attention"), "--sizes", "9", "--channels", "16"]
    command += ["--pixels-per-batch", "162", "--quick", "--out", str(out)]
    command += ["--parts", "layers"]
    result = run_in_root(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["layer"] for r in records] == [
        "conv3x3",
        "local_auto",
        "local_shifted",
        "local_dense",
        "local_reference",
    ] * 2
    assert {r["precision"] for r in records} == {"float32", "bf16"}
    for record in records:
        assert record["batch"] == 2 and record["ms_per_image"] > 0
        conv = next(r for r in records if r["layer"] == "conv3x3" and r["precision"] == record["precision"])
        ratio, slack = ratio_of_rounded(record["ms_per_image"], conv["ms_per_image"], 3, 2)
        assert record["time_vs_conv3x3"] == pytest.approx(ratio, abs=slack)
        assert isinstance(record["native_bf16"], bool) and record["machine"]
    table = run_in_root([*bench("local_attention"), "--table", str(out)], capture_output=True, text=True)
    assert "| 9 px | float32 | " in table.stdout and "| 9 px | bf16 | " in table.stdout


def test_a_network_record_compares_the_pair_on_the_same_images(monkeypatch):
    monkeypatch.setitem(local_attention.NETWORKS, "tiny", ("resnet_tiny", {"width": 16, "stem": "small"}, 1, 12, 2))
    records = [
        local_attention.network_record("tiny", "float32", argparse.Namespace(rounds=1, layout=layout))
        for layout in ("contiguous", "channels_last")
    ]
    for record in records:
        ratio, slack = ratio_of_rounded(record["local_img_per_s"], record["conv3x3_img_per_s"], 2, 3)
        assert record["ratio"] == pytest.approx(ratio, abs=slack)
        assert record["goal_met"] == (record["ratio"] >= 0.5)
        speedup, slack = ratio_of_rounded(record["local_img_per_s"], record["local_reference_img_per_s"], 2, 2)
        assert record["speedup_vs_reference"] == pytest.approx(speedup, abs=slack)
    table = local_attention.render_table(records)
    for record in records:  # one row per layout; records from before the option read as contiguous
        assert f"| tiny | float32 | {record['layout']} | {record['local_img_per_s']:.1f} |" in table
    old = {k: v for k, v in records[0].items() if k != "layout"}
    assert "| tiny | float32 | contiguous |" in local_attention.render_table([old])


def test_the_crossover_part_reports_the_faster_formulation_and_autos_choice(monkeypatch):
    monkeypatch.setattr(local_attention, "CROSSOVER", [(4, 5), (16, 6)])
    records = local_attention.crossover_records(argparse.Namespace(rounds=1, pixels_per_batch=100))
    assert [(r["head_dim"], r["size"]) for r in records] == [(4, 5), (16, 6)]
    for record in records:
        times = {i: record[f"{i}_ms_per_image"] for i in ("shifted", "dense")}
        assert record["faster"] == min(times, key=times.__getitem__)
    assert [r["auto_chooses"] for r in records] == ["dense", "dense"]  # 50 < 196, 72 < 784
    assert "| 16 | 6 px |" in local_attention.render_table(records)
