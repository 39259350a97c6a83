"""Images per second to a normalised, augmented 224 batch: a tutorial-style pipeline against attnscope's.

    python -m benchmarks.data_pipeline               # 2,000 JPEGs of 512x512, written to a temporary folder
    python -m benchmarks.data_pipeline --count 500
    python -m benchmarks.data_pipeline --out benchmarks/results/data_pipeline-cpu.jsonl
    python -m benchmarks.data_pipeline --table benchmarks/results/data_pipeline-cpu.jsonl   # the README's table

(a) tutorial-style (the AttnVGG melanoma tutorial's per-item pipeline, recorded as
``seed_style``): per item in ``__getitem__``, decode the full JPEG, convert, resize
    the shorter side to 256, random-crop 224, rotate and flip with Pillow, make a
    tensor and normalise; a default DataLoader (no workers), and the same with 2.
(b) attnscope cold: the first epoch, which builds the decode cache (JPEG draft
    decoding, worker processes), then the batch augmentation (rotation, flips)
    and normalisation; warm: a later epoch from the cache.

The warm ratio compares (a) without workers and (b) warm epochs timed in turn,
``--rounds`` of each, medians: the shared machine's speed drifts by 2-3x between
minutes, and an epoch of each measured at different times gave ratios from 9.5 to 17.5
for the same code.

Prints one JSON object with every rate and the ratios to (a) without workers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnscope.data import AugmentConfig, BatchLoader, BatchTransform, load_images
from attnscope.data.augment import IMAGENET_MEAN, IMAGENET_STD
from attnscope.data.sources import from_csv
from attnscope.data.sources.synthetic import render_lesion
from attnscope.training.precision import native_bf16
from benchmarks.common import add_result_arguments, append_records, print_table, run_facts

SIZE = 224
BATCH = 32


def write_jpegs(folder: Path, count: int, size: int = 512, seed: int = 0) -> Path:
    """``count`` distinct 512x512 dermoscopy-like JPEGs and a marking.csv (a few lesions, shifted)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bases = [render_lesion(np.random.default_rng((seed, i)), rng.normal(1, 1), size)[0] for i in range(24)]
    rows = ["image_id,target"]
    for index in range(count):
        shift = rng.integers(-60, 60, 2)
        image = np.roll(bases[index % len(bases)], tuple(shift), axis=(0, 1))
        Image.fromarray(image).save(folder / f"IMG_{index:05d}.jpg", quality=90)
        rows.append(f"IMG_{index:05d},{index % 2}")
    (folder / "marking.csv").write_text("\n".join(rows) + "\n")
    return folder / "marking.csv"


class SeedStyleDataset(torch.utils.data.Dataset):
    """What the reference code does: all the work per item, on full-size decodes."""

    def __init__(self, paths: list[str], labels: np.ndarray) -> None:
        self.paths, self.labels = paths, labels
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        rng = np.random.default_rng(index)
        image = Image.open(self.paths[index]).convert("RGB")
        width, height = image.size
        scale = 256 / min(width, height)
        image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
        left, top = rng.integers(0, image.size[0] - SIZE + 1), rng.integers(0, image.size[1] - SIZE + 1)
        image = image.crop((left, top, left + SIZE, top + SIZE)).rotate(rng.uniform(-10, 10), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        return (tensor - self.mean) / self.std, int(self.labels[index])


def seed_style_rate(paths: list[str], labels: np.ndarray, workers: int) -> float:
    loader = torch.utils.data.DataLoader(
        SeedStyleDataset(paths, labels), batch_size=BATCH, shuffle=True, num_workers=workers
    )
    start = time.perf_counter()
    seen = sum(len(images) for images, _ in loader)
    return seen / (time.perf_counter() - start)


def attnscope_epoch(manifest, cache_dir: Path, transform: BatchTransform, workers: int) -> float:
    """Images per second of one epoch: (cached or fresh) decode, gather, augment, normalise."""
    start = time.perf_counter()
    decoded = load_images(manifest, SIZE, "RGB", cache_dir, workers=workers, progress=False)
    seen = 0
    for batch in BatchLoader(decoded, np.arange(len(decoded)), BATCH, shuffle=True):
        images, _ = transform(batch["image"], train=True)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def render_table(records: list[dict]) -> str:
    """The latest run with interleaved rounds: every rate and its ratio to (a) without workers."""
    r = [record for record in records if "rounds" in record][-1]
    with_workers = r[f"seed_style_{r['workers']}_workers_img_per_s"]
    per_round = ", ".join(f"{ratio:.1f}" for ratio in r["warm_vs_seed_style_per_round"])
    lines = [
        f"{r['date']}, {r['machine']} (native bf16: {'yes' if r['native_bf16'] else 'no'}), {r['cpu_count']} CPUs, "
        f"{r['images']} JPEGs of {r['source_size']} px to batches of {r['batch_size']} at {r['output_size']} px",
        "",
        "| pipeline | images/s | vs tutorial-style |",
        "|---|---:|---:|",
        f"| (a) tutorial-style, per item, DataLoader without workers (median of {r['rounds']}) "
        f"| {r['seed_style_img_per_s']:.0f} | 1.0 |",
        f"| (a) tutorial-style, per item, DataLoader with {r['workers']} workers | {with_workers:.0f} "
        f"| {with_workers / r['seed_style_img_per_s']:.2f} |",
        f"| (b) attnscope cold (builds the cache) | {r['attnscope_cold_img_per_s']:.0f} "
        f"| {r['cold_vs_seed_style']:.2f} |",
        f"| (b) attnscope warm (from the cache; median of {r['rounds']}) | {r['attnscope_warm_img_per_s']:.0f} "
        f"| {r['warm_vs_seed_style']:.2f} (rounds: {per_round}) |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved epochs of (a) and of (b) warm")
    parser.add_argument("--workdir", type=Path, help="where the JPEGs and the cache go (default: a temporary folder)")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, render_table):
        return 0
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(dir=args.workdir) as temporary:
        folder = Path(temporary)
        print(f"writing {args.count} JPEGs of 512x512 ...", file=sys.stderr, flush=True)
        manifest = from_csv(write_jpegs(folder / "images", args.count))
        transform = BatchTransform(
            AugmentConfig(rotation=10, hflip=True, vflip=True), IMAGENET_MEAN, IMAGENET_STD, SIZE, 3
        )
        print("tutorial-style pipeline with workers, attnscope cold ...", file=sys.stderr, flush=True)
        seed_rate_workers = seed_style_rate(manifest.paths, manifest.labels, workers=args.workers)
        cold = attnscope_epoch(manifest, folder / "cache", transform, args.workers)
        seed_rates, warm_rates = [], []
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds}: tutorial-style, attnscope warm", file=sys.stderr, flush=True)
            seed_rates.append(seed_style_rate(manifest.paths, manifest.labels, workers=0))
            warm_rates.append(attnscope_epoch(manifest, folder / "cache", transform, args.workers))
        seed_rate, warm = statistics.median(seed_rates), statistics.median(warm_rates)
    record = {
        "benchmark": "data_pipeline",
        "images": args.count,
        "source_size": 512,
        "batch_size": BATCH,
        "output_size": SIZE,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "workers": args.workers,
        "rounds": args.rounds,
        "warm_vs_seed_style_per_round": [round(w / r, 2) for w, r in zip(warm_rates, seed_rates, strict=True)],
        "seed_style_img_per_s": round(seed_rate, 1),
        f"seed_style_{args.workers}_workers_img_per_s": round(seed_rate_workers, 1),
        "attnscope_cold_img_per_s": round(cold, 1),
        "attnscope_warm_img_per_s": round(warm, 1),
        "cold_vs_seed_style": round(cold / seed_rate, 2),
        "warm_vs_seed_style": round(warm / seed_rate, 2),
        "cold_vs_seed_style_with_workers": round(cold / seed_rate_workers, 2),
        "warm_vs_seed_style_with_workers": round(warm / seed_rate_workers, 2),
        "goals": {"warm_10x": warm >= 10 * seed_rate, "cold_2x": cold >= 2 * seed_rate},
        **run_facts(),
        "native_bf16": native_bf16("cpu"),
    }
    print(json.dumps(record))
    append_records(args.out, [record])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
