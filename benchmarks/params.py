"""Parameter counts of every registered model, one JSON object per model.

    python -m benchmarks.params              # JSON lines
    python -m benchmarks.params --markdown   # the README's table

Counts use a 1000-class head, as in the papers, so they can be compared with
them. ``vgg16_bn_dense`` adds torchvision's three dense layers to VGG16-BN's
features: the seed's point that dropping them removes most of the parameters.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from attnscope.models import list_models, model_summary

RATIO_BASES = ("resnet50", "vgg16_bn")
TORCHVISION_DENSE_HEAD = ((512 * 7 * 7, 4096), (4096, 4096), (4096, 1000))


def vgg16_bn_with_dense_layers() -> dict[str, object]:
    """VGG16-BN's features plus torchvision's dense classifier, counted on the meta device."""
    with torch.device("meta"):
        dense = sum(p.numel() for i, o in TORCHVISION_DENSE_HEAD for p in nn.Linear(i, o).parameters())
    features = model_summary("vgg16_bn")["params"] - (512 * 1000 + 1000)
    return {
        "model": "vgg16_bn_dense",
        "params": features + dense,
        "num_classes": 1000,
        "input_size": [3, 224, 224],
        "attention_taps": 0,
        "pretrained": "torchvision ImageNet",
        "paper": "torchvision vgg16_bn with its three dense layers (for comparison)",
    }


def records() -> list[dict[str, object]]:
    rows = [model_summary(name) for name in list_models()]
    rows.append(vgg16_bn_with_dense_layers())
    by_name = {row["model"]: row["params"] for row in rows}
    for row in rows:
        for base in RATIO_BASES:
            if row["model"] != base and base in str(row["model"]):
                row[f"ratio_to_{base}"] = round(row["params"] / by_name[base], 3)
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | parameters (1000 classes) | vs base | input | attention taps | published weights | from |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for row in rows:
        size = "x".join(str(n) for n in row["input_size"])
        ratio = next((f"x{row[f'ratio_to_{b}']:.2f} {b}" for b in RATIO_BASES if f"ratio_to_{b}" in row), "")
        lines.append(
            f"| `{row['model']}` | {row['params']:,} | {ratio} | {size} | {row['attention_taps']} | "
            f"{row['pretrained']} | {row['paper']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the README table instead of JSON")
    args = parser.parse_args()
    rows = records()
    print(markdown(rows) if args.markdown else "\n".join(json.dumps(row) for row in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
