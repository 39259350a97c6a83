"""Seconds per training step and per epoch of a model through attnscope's engine (Lightning loop).

    python -m benchmarks.train_epoch                                   # attn_vgg16_bn, 224 px, batch 32
    python -m benchmarks.train_epoch --model attn_vgg_tiny --size 64 --steps 3 --variants fp32

Each variant trains ``--steps`` timed batches (after ``--warmup`` untimed ones)
of generated lesions through the real training task (uint8 batch -> on-device
augmentation -> forward -> focal loss -> backward -> Adam step), and times
``--steps`` validation batches. The baseline is the same model in float32,
measured in the same run; the other variants (channels_last, bf16-mixed) are
reported as ratios to it. The epoch time is extrapolated from the median step
to ``--epoch-images`` training and validation images (default: the seed's
melanoma recipe, 6,000 benign sampled + 584 malignant, 80/20 split); a full
epoch of VGG16 at 224 px takes tens of minutes on 2 cores, so it is not run whole.

Prints one JSON object per variant, then a summary object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from attnscope.data.module import DataModule
from attnscope.engine.build import build_model
from attnscope.engine.config import load_config
from attnscope.training.task import ClassifierTask
from attnscope.training.train import LoaderModule
from benchmarks.common import append_records, choose

VARIANTS = {
    "fp32": {"trainer.precision": "32-true", "trainer.channels_last": False},
    "channels_last": {"trainer.precision": "32-true", "trainer.channels_last": True},
    "bf16": {"trainer.precision": "bf16-mixed", "trainer.channels_last": False},
    "bf16_channels_last": {"trainer.precision": "bf16-mixed", "trainer.channels_last": True},
}


class StepTimer(Callback):
    """Wall time of every training and validation batch."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.val: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.train.append(time.perf_counter() - self._start)

    def on_validation_batch_start(self, *args) -> None:
        self._start = time.perf_counter()

    def on_validation_batch_end(self, *args) -> None:
        self.val.append(time.perf_counter() - self._start)


def measure(args: argparse.Namespace, variant: str, cache: str) -> dict:
    batches = args.warmup + args.steps
    settings = [
        f"model.name={args.model}",
        "data.source=synthetic_lesions",
        f"data.source_options={{count: {batches * args.batch * 3}, size: {args.size}}}",
        f"data.image_size={args.size}",
        f"data.batch_size={args.batch}",
        "data.val_fraction=0.3",
        "data.test_fraction=0.05",
        "data.progress=false",
        f"data.cache_dir={cache}",
        "trainer.epochs=1",
        "trainer.accelerator=cpu",
        "trainer.progress=false",
    ]
    settings += [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in VARIANTS[variant].items()]
    config = load_config(None, settings)
    L.seed_everything(0, verbose=False)
    data = DataModule(config.data).setup()
    model = build_model(config, data.manifest.num_classes, data.manifest.multilabel, data.channels)
    task = ClassifierTask(config, model, data.transform(), "binary", list(data.manifest.classes))
    timer = StepTimer()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        precision=config.trainer.precision,
        limit_train_batches=batches,
        limit_val_batches=batches,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(task, datamodule=LoaderModule(data))
    train_step = statistics.median(timer.train[args.warmup :])
    val_step = statistics.median(timer.val[args.warmup :])
    train_images = round(args.epoch_images * 0.8)
    val_images = args.epoch_images - train_images
    return {
        "variant": variant,
        "model": args.model,
        "image_size": args.size,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "precision": config.trainer.precision,
        "channels_last": config.trainer.channels_last,
        "timed_steps": args.steps,
        "train_step_s": round(train_step, 4),
        "train_img_per_s": round(args.batch / train_step, 2),
        "val_step_s": round(val_step, 4),
        "val_img_per_s": round(args.batch / val_step, 2),
        "epoch_images": args.epoch_images,
        "epoch_s": round(-(-train_images // args.batch) * train_step + -(-val_images // args.batch) * val_step, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="attn_vgg16_bn")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--epoch-images", type=int, default=6584)
    parser.add_argument(
        "--variants",
        default="fp32,channels_last,bf16",
        help=f"comma-separated, first is the baseline; known: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args()
    variants = choose(parser, args.variants, VARIANTS, "variant")
    records = []
    with tempfile.TemporaryDirectory(prefix="attnscope-bench-") as cache:
        for variant in variants:
            records.append(measure(args, variant, cache))
            print(json.dumps(records[-1]), flush=True)
    baseline = records[0]
    summary = {
        "summary": "train_epoch",
        "baseline": baseline["variant"],
        "model": args.model,
        "cpu_count": os.cpu_count(),
        "train_speedup": {r["variant"]: round(baseline["train_step_s"] / r["train_step_s"], 3) for r in records},
        "val_speedup": {r["variant"]: round(baseline["val_step_s"] / r["val_step_s"], 3) for r in records},
    }
    print(json.dumps(summary), flush=True)
    append_records(args.out, [*records, summary])


if __name__ == "__main__":
    main()
