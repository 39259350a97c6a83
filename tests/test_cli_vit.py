"""A vision transformer from the command line: trained, explained with its attention, the CAMs on its tokens,
attention rollout and transformer attribution (sanity-checked), and exported to ONNX."""

import csv
import json

import pytest

from attnscope import cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_vit_trains_explains_and_exports_from_the_command_line(tmp_path, capsys):
    run_dir = tmp_path / "vit"
    train = ["train", "--model", "vit_tiny_patch16_224", "--model-option", "depth=2", "--model-option", "patch_size=8",
             "--data", "synthetic_lesions", "--data-option", "count=120", "--data-option", "size=40",
             "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--lr", "0.001", "--run-dir", str(run_dir),
             "--no-progress"]  # fmt: skip
    assert cli.main(train) == 0
    methods = ["attention", "gradcam", "attention_rollout", "transformer_attribution"]
    explain = ["explain", str(run_dir), "--count", "4", "--sanity", "2", "--no-progress"]
    explain += [flag for method in methods for flag in ("--method", method)]
    assert cli.main(explain) == 0
    rows = list(csv.DictReader((run_dir / "explain" / "scores.csv").open()))
    found = {row["method"] for row in rows}
    assert found == {"attention:blocks.1.attn.cls_map", "gradcam", "attention_rollout", "transformer_attribution"}
    sanity = json.loads((run_dir / "explain" / "sanity.json").read_text())
    assert set(sanity["methods"]) == found
    assert len(list((run_dir / "explain" / "overlays").iterdir())) == 4
    out = tmp_path / "vit.onnx"
    assert cli.main(["export", str(run_dir), "--out", str(out), "--check-images", "4", "--no-progress"]) == 0
    assert out.stat().st_size > 100_000
    printed = capsys.readouterr().out
    assert "transformer_attribution" in printed
