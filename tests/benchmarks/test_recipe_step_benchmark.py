"""The recipe-step benchmark times the shipped model against its variants in one run, and says so."""

import importlib.resources
import json

import yaml

from attnscope.models import create_model
from benchmarks.common import native_bf16_text, short_cpu
from tests.benchmarks import bench, run_in_root

BENCH = bench("recipe_step")


def small_recipe(tmp_path):
    """The shipped Fashion-MNIST config with a batch of 8, so that a step takes milliseconds."""
    shipped = importlib.resources.files("attnscope.configs").joinpath("fashion_mnist.yaml").read_text()
    config = yaml.safe_load(shipped)
    config["data"]["batch_size"] = 8
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


def test_times_each_variant_against_the_shipped_step_with_its_widths_and_size(tmp_path):
    config, path = small_recipe(tmp_path)
    out = tmp_path / "records.jsonl"
    args = ["--config", str(path), "--channels", "32,64,128,128;16,32,64,64", "--no-compile", "--rounds", "2"]
    result = run_in_root([*BENCH, *args, "--steps", "1", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    records, summary = lines[:-1], lines[-1]
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    assert [r["variant"] for r in records] == ["shipped", "channels 32/64/128/128", "channels 16/32/64/64"]
    assert [r["channels"] for r in records] == [[32, 64, 128, 256], [32, 64, 128, 128], [16, 32, 64, 64]]
    for r in records:
        model = create_model(
            "resnet_tiny", num_classes=10, in_chans=1, **config["model"]["options"], channels=r["channels"]
        )
        assert r["params"] == sum(p.numel() for p in model.parameters())
        assert (r["batch"], r["size"], r["channels_last"]) == (8, 28, True)
        assert abs(r["train_img_per_s"] - 8 / r["step_s"]) < 0.1 + 1e-3 * r["train_img_per_s"]
        assert abs(r["x_shipped"] - records[0]["step_s"] / r["step_s"]) < 0.01 * r["x_shipped"] + 1e-3
        assert summary["x_shipped"][r["variant"]] == r["x_shipped"]
    assert records[0]["x_shipped"] == 1.0
    assert records[0]["precision"] == ("bf16-mixed" if records[0]["native_bf16"] else "32-true")  # auto, resolved
    table = run_in_root([*BENCH, "--table", str(out)], capture_output=True, text=True).stdout.splitlines()
    assert table[2].startswith("| shipped | 32/64/128/256 | 1.23 M | ") and "| 1.00x |" in table[2]
    assert table[-1].endswith(f"| {short_cpu(records[0])}, native bf16: {native_bf16_text(records[0])} |")
    refused = run_in_root([*BENCH, "--channels", "32,64,x"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--channels '32,64,x'" in refused.stderr
    wrong = run_in_root([*BENCH, "--channels", "32,64,128", "--no-compile"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "--channels: channels=[32, 64, 128]: give the four stages' widths" in wrong.stderr
