"""The throughput benchmark runs end to end on tiny models and reports ratios that agree with its rates."""

import json

from benchmarks.common import cpu_name, native_bf16_text, short_cpu
from benchmarks.throughput import machine_text
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
    assert base["machine"] == base["device_name"] == cpu_name() and isinstance(base["native_bf16"], bool)
    table = run_in_root([*BENCH, "--table", str(out)], capture_output=True, text=True).stdout.splitlines()
    assert table[-1].startswith("| resnet_tiny | ")
    assert table[-1].endswith(f"| {short_cpu(base)} (native bf16: {native_bf16_text(base)}) |")
    refused = run_in_root([*BENCH, "--variants", "bf16,fp32"], capture_output=True, text=True)
    assert refused.returncode == 2 and "first variant must be fp32" in refused.stderr


def test_each_row_names_its_device_and_says_where_a_record_predates_that():
    old = {"device": "cpu", "device_name": "x86_64"}
    intel = {"device": "cpu", "machine": "Intel(R) Xeon(R) Processor", "native_bf16": True}
    gpu = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}
    assert machine_text([old, old]) == "not recorded"
    assert machine_text([intel, old]) == "Intel Xeon (native bf16: yes), not recorded"
    assert machine_text([gpu]) == "NVIDIA H100 80GB HBM3"
