"""The Fashion-MNIST benchmark runs end to end (one small epoch) on Debian's real data."""

import json
import pathlib

import pytest

from benchmarks.fashion_mnist import epochs_text, stage_widths
from tests.benchmarks import bench, run_in_root

BENCH = bench("fashion_mnist")
FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; make test installs it as root)",
)
def test_reports_test_accuracy_on_the_official_test_set(tmp_path):
    out = tmp_path / "records.jsonl"
    result = run_in_root(
        [
            *BENCH,
            "--set",
            "trainer.epochs=1",
            "--set",
            "model.options.width=4",
            "--set",
            "data.batch_size=64",
            "--set",
            "trainer.precision=32-true",
            "--set",  # 300 training images a class: the script's path, not its accuracy, is under test
            "data.undersample={" + ", ".join(f"{c}: 300" for c in range(10)) + "}",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["test_images"] == 10000 and record["epochs"] == 1
    assert record["time_budget_s"] == 570  # the shipped recipe's; --set trainer.epochs=1 caps what it plans
    assert record["budget"]["planned_epochs"] == 1 and record["budget"]["events"] == []
    assert 0.5 < record["test_accuracy"] < 1  # one epoch of a width-4 net is far from chance
    assert 0.5 < record["test_accuracy_tta"] < 1 and record["test_accuracy_tta"] != record["test_accuracy"]
    assert record["goal_0.95_in_600s"] == (record["test_accuracy"] >= 0.95 and record["wall_s"] <= 600)
    assert record["precision"] == "32-true" and record["machine"] and isinstance(record["native_bf16"], bool)
    assert json.loads(out.read_text()) == record
    table = run_in_root([*BENCH, "--table", str(out)], capture_output=True, text=True)
    row = table.stdout.strip().splitlines()[-1]
    scores = f"| {record['test_accuracy']:.4f} | {record['test_accuracy_tta']:.4f} |"
    assert row.startswith(f"| 4/8/16/32 | 1 (570 s budget) | {record['val_accuracy']:.4f} {scores}")
    assert row.endswith("| no |")


def test_the_epochs_cell_says_what_the_budget_did():
    assert epochs_text({"epochs": 15}) == "15"
    assert epochs_text({"epochs": 5, "time_budget_s": 570}) == "5 (570 s budget)"  # before budget.json
    replanned = {"planned_epochs": 6, "events": [{"action": "replanned", "epochs": 4}]}
    assert (
        epochs_text({"epochs": 4, "time_budget_s": 570, "budget": replanned}) == "4, re-planned 6 -> 4 (570 s budget)"
    )
    both_ways = [{"action": "replanned", "epochs": 6, "after_batch": 43}, {"action": "replanned", "epochs": 5}]
    journal = {"planned_epochs": 5, "events": both_ways}
    assert (
        epochs_text({"epochs": 5, "time_budget_s": 570, "budget": journal})
        == "5, re-planned 5 -> 6 -> 5 (570 s budget)"
    )
    stopped = {"planned_epochs": 7, "events": [{"action": "stopped", "epochs": 5}]}
    stopped_record = {"epochs": 5, "time_budget_s": 570, "budget": stopped}
    assert epochs_text(stopped_record) == "5 of 7 planned, stopped (570 s budget)"


def test_the_widths_cell_reads_the_channels_option_or_doubles_the_width():
    assert stage_widths({"model_options": {"stem": "small", "width": 32}}) == "32/64/128/256"
    assert stage_widths({"model_options": {"width": 32, "channels": [32, 64, 128, 128]}}) == "32/64/128/128"
    assert stage_widths({"model_options": {}}) == "16/32/64/128"  # resnet_tiny's own width
