"""Which learning rate a user's folder should get: the default (Adam 1e-4, the AttnVGG melanoma tutorial's),
1e-3, or ``--lr auto`` (a range test before training), on a small folder and a larger one.

    python -m benchmarks.learning_rate --out benchmarks/results/learning_rate-cpu.jsonl
    python -m benchmarks.learning_rate --quick          # a smoke run: 100 images, one epoch
    python -m benchmarks.learning_rate --table benchmarks/results/learning_rate-cpu.jsonl

The folders are Fashion-MNIST images (Debian's ``dataset-fashion-mnist``) written as PNG files, one
subfolder per class, as a user's own images would be: the small one 60 a class (600), the larger one 600 a
class (6,000). Each is trained with the shipped ``demo`` recipe (a small attention VGG at 32 px, no
masks) for the same epochs at each rate, and scored on its held-out test split (15%, never seen while the
rate or the best epoch was chosen). One JSON object per folder and rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from attnscope.data.sources.arrays import read_idx
from attnscope.engine.config import load_config
from attnscope.engine.inference import EvaluateOptions, evaluate
from attnscope.engine.run import Run
from attnscope.training import train
from benchmarks.common import add_result_arguments, append_records, print_table, provenance, run_facts

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
RATES = ("0.0001", "0.001", "auto")
FOLDERS = {"small": 60, "larger": 600}  # images per class


def write_folder(out: Path, per_class: int, seed: int = 0) -> Path:
    """``per_class`` seeded training images of each Fashion-MNIST class as PNGs under ``out/<class>/``."""
    images = read_idx(FASHION_MNIST / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    for label in range(10):
        folder = out / f"class_{label}"
        folder.mkdir(parents=True)
        for number, row in enumerate(rng.choice(np.flatnonzero(labels == label), per_class, replace=False)):
            Image.fromarray(images[row]).save(folder / f"{number:04d}.png")
    return out


def run_one(root: Path, rate: str, epochs: int, run_dir: Path) -> dict:
    """Train the demo recipe on the folder at ``rate`` and score its test split."""
    config = load_config(
        "demo",
        [f"run_dir={run_dir}", "data.source=folder", f"data.source_options={{root: {root}}}", "data.mode=L",
         "data.image_size=32", "supervision.weights={}", f"trainer.epochs={epochs}", f"optim.lr={rate}",
         "trainer.progress=false", "data.progress=false"],
    )  # fmt: skip
    started = time.perf_counter()
    train(config)
    seconds = time.perf_counter() - started
    with Run.open(run_dir, progress=False) as run:
        metrics = evaluate(run, EvaluateOptions(split="test", bootstrap=0)).metrics
    chosen = json.loads((run_dir / "lr_find.json").read_text())["suggested"] if rate == "auto" else float(rate)
    return {"rate": rate, "lr": chosen, "epochs": epochs, "test_accuracy": round(metrics["accuracy"], 4),
            "test_auc": round(metrics["auc"], 4), "train_s": round(seconds, 1)}  # fmt: skip


def render(records: list[dict]) -> str:
    lines = [
        "| folder | images | rate | learning rate used | test accuracy | test AUC (macro) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in records:
        scores = f"{r['test_accuracy']:.3f} | {r['test_auc']:.3f}"
        lines.append(f"| {r['folder']} | {r['images']:,} | {r['rate']} | {r['lr']:.2g} | {scores} |")
    return "\n".join(lines) + "\n\n" + provenance(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="100 images, one epoch: a smoke run")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, render):
        return
    folders = {"quick": 10} if args.quick else FOLDERS
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, per_class in folders.items():
            root = write_folder(Path(scratch) / name, per_class)
            for rate in RATES:
                result = run_one(root, rate, 1 if args.quick else args.epochs, Path(scratch) / f"{name}-{rate}")
                record = {"folder": name, "images": per_class * 10, **result, **run_facts()}
                print(json.dumps(record), flush=True)
                records.append(record)
    append_records(args.out, records)


if __name__ == "__main__":
    main()
