"""Parameter counts of every registered model, one JSON object per model.

    python -m benchmarks.params              # JSON lines
    python -m benchmarks.params --markdown   # the README's table

Counts use a 1000-class head, as in the papers, so they can be compared with
them. ``vgg16_bn_dense`` adds torchvision's three dense layers to VGG16-BN's
features: the point of Jetley et al. 2018 (and the AttnVGG melanoma tutorial) that dropping
them removes most of the parameters. Where a paper publishes a count, the record holds it and
our count's ratio to it (``PUBLISHED``; the tests hold every ratio within 1%, as the papers print 3-4 digits).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from attnscope.models import list_models, model_summary

RATIO_BASES = ("resnet50", "resnet101", "vgg16_bn")
# parameter counts the papers publish (1000 classes), to check ours against: (count, where)
PUBLISHED = {
    "resnet50": (25.56e6, "He et al. 2016 / torchvision"),
    "resnet101": (44.55e6, "He et al. 2016 / torchvision"),
    "se_resnet50": (28.09e6, "Hu et al. 2018; Woo et al. 2018, Table 3"),
    "se_resnet101": (49.33e6, "Woo et al. 2018, Table 3"),
    "cbam_resnet50": (28.09e6, "Woo et al. 2018, Table 3"),
    "cbam_resnet101": (49.33e6, "Woo et al. 2018, Table 3"),
    "local_resnet26": (10.3e6, "Ramachandran et al. 2019, Table 1"),
    "local_resnet38": (14.1e6, "Ramachandran et al. 2019, Table 1"),
    "local_resnet50": (18.0e6, "Ramachandran et al. 2019, Table 1"),
    "densenet121": (7.98e6, "Huang et al. 2017 / torchvision (7,978,856)"),
    "densenet169": (14.15e6, "Huang et al. 2017 / torchvision (14,149,480)"),
    "vit_tiny_patch16_224": (5.72e6, "Touvron et al. 2021, Table 1 (5M) / timm (5,717,416)"),
    "vit_small_patch16_224": (22.05e6, "Touvron et al. 2021, Table 1 (22M) / timm (22,050,664)"),
    "deit_tiny_patch16_224": (5.72e6, "Touvron et al. 2021, Table 1 (5M) / timm (5,717,416)"),
    "deit_small_patch16_224": (22.05e6, "Touvron et al. 2021, Table 1 (22M) / timm (22,050,664)"),
}
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
        if row["model"] in PUBLISHED:
            count, where = PUBLISHED[str(row["model"])]
            row["published_params"], row["published_in"] = count, where
            row["ratio_to_published"] = round(row["params"] / count, 4)
        for base in RATIO_BASES:
            if row["model"] != base and base in str(row["model"]):
                row[f"ratio_to_{base}"] = round(row["params"] / by_name[base], 3)
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | parameters (1000 classes) | vs base | vs paper | input | attention taps | published weights "
        "| from |",
        "|---|---:|---:|---:|---|---:|---|---|",
    ]
    for row in rows:
        size = "x".join(str(n) for n in row["input_size"])
        ratio = next((f"x{row[f'ratio_to_{b}']:.2f} {b}" for b in RATIO_BASES if f"ratio_to_{b}" in row), "")
        published = (
            f"{row['published_params'] / 1e6:.2f} M (x{row['ratio_to_published']:.3f})"
            if "published_params" in row
            else ""
        )
        lines.append(
            f"| `{row['model']}` | {row['params']:,} | {ratio} | {published} | {size} | {row['attention_taps']} | "
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
