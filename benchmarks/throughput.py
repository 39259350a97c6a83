"""Training and inference images per second of whole models, and what each speed option buys.

    python -m benchmarks.throughput --out benchmarks/results/throughput-cpu.jsonl
    python -m benchmarks.throughput --device cuda --batch 128 --variants fp32,amp \
        --out benchmarks/results/throughput-<gpu>.jsonl
    python -m benchmarks.throughput --models resnet_tiny --size 64 --steps 2     # a quick check

For each model and variant: a training step (forward, cross-entropy, backward, SGD
step) and an inference pass (no_grad) on random images, ``--steps`` timed after
one warm-up, median reported. Variants: ``fp32`` (the baseline, measured in the
same run), ``channels_last``, ``bf16`` (autocast), ``bf16_channels_last``,
``compile`` (``nn.Module.compile``; the warm-up includes the compilation), and on
CUDA ``amp`` (float16 autocast with a gradient scaler). Ratios are to ``fp32``.

Prints one JSON object per (model, variant), then a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn import functional as F

from attnscope.models import create_model
from benchmarks.common import (
    add_result_arguments,
    append_records,
    choose,
    cpu_name,
    native_bf16_text,
    print_table,
    run_facts,
    short_cpu,
)

MODELS = ("attn_vgg16_bn", "resnet50", "se_resnet50", "cbam_resnet50", "local_resnet26")
VARIANTS = ("fp32", "channels_last", "bf16", "bf16_channels_last", "compile", "amp")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, steps: int, device: torch.device) -> float:
    """Median seconds of ``function`` over ``steps`` calls after one warm-up call."""
    function()
    synchronize(device)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(name: str, variant: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    if "channels_last" in variant:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if variant == "compile":
        model.compile()
    dtype = torch.bfloat16 if variant.startswith("bf16") else torch.float16 if variant == "amp" else None
    scaler = torch.amp.GradScaler(device.type, enabled=variant == "amp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def autocast():
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def train_step() -> None:
        model.train()
        with autocast():
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    @torch.no_grad()
    def inference() -> None:
        model.eval()
        with autocast():
            model(images)

    train_s = timed(train_step, args.steps, device)
    infer_s = timed(inference, args.steps, device)
    return {
        "model": name,
        "variant": variant,
        "device": str(device),
        "device_name": device_name(device),
        "batch": args.batch,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "train_img_per_s": round(args.batch / train_s, 2),
        "infer_img_per_s": round(args.batch / infer_s, 2),
        **run_facts(),
    }


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def machine_text(records: list[dict]) -> str:
    """The machine a row was measured on: the device's name and, on a CPU, native bf16; records
    written before 2026-11-22 kept only the architecture."""
    names = []
    for r in records:
        if r.get("device", "cpu") != "cpu":
            names.append(r["device_name"])
        elif "machine" in r:
            names.append(f"{short_cpu(r)} (native bf16: {native_bf16_text(r)})")
        else:
            names.append("not recorded")
    return ", ".join(dict.fromkeys(names))


def render_table(records: list[dict]) -> str:
    """Images/s per model and variant, with the ratio to the same model's fp32 in brackets."""
    rows = [r for r in records if "model" in r]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = [
        "| model | " + " | ".join(f"{v} train (x) | {v} infer (x)" for v in variants) + " | device |",
        "|---|" + "---:|" * (2 * len(variants)) + "---|",
    ]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = {r["variant"]: r for r in rows if r["model"] == name}
        base = mine["fp32"]
        cells = []
        for variant in variants:
            r = mine.get(variant)
            if r is None:
                cells += ["", ""]
                continue
            cells += [
                f"{r['train_img_per_s']:.1f} ({r['train_img_per_s'] / base['train_img_per_s']:.2f})",
                f"{r['infer_img_per_s']:.1f} ({r['infer_img_per_s'] / base['infer_img_per_s']:.2f})",
            ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {machine_text(list(mine.values()))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--variants",
        default="fp32,channels_last,bf16,bf16_channels_last",
        help=f"comma-separated, fp32 first as the baseline; known: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, render_table):
        return
    from attnscope.models import list_models

    models = choose(parser, args.models, list_models(), "model")
    variants = choose(parser, args.variants, VARIANTS, "variant")
    if variants[0] != "fp32":
        parser.error("the first variant must be fp32: the others are reported as ratios to it")
    device = torch.device(args.device)
    if "amp" in variants and device.type != "cuda":
        parser.error("amp (float16 with a gradient scaler) is for CUDA; on a CPU use bf16")
    records = []
    for name in models:
        for variant in variants:
            records.append(measure(name, variant, args, device))
            print(json.dumps(records[-1]), flush=True)
    ratios = {}
    for name in models:
        base = next(r for r in records if r["model"] == name and r["variant"] == "fp32")
        ratios[name] = {
            r["variant"]: {
                "train": round(r["train_img_per_s"] / base["train_img_per_s"], 3),
                "infer": round(r["infer_img_per_s"] / base["infer_img_per_s"], 3),
            }
            for r in records
            if r["model"] == name
        }
    summary = {"summary": "throughput", "baseline": "fp32", "ratios": ratios}
    print(json.dumps(summary), flush=True)
    append_records(args.out, [*records, summary])


if __name__ == "__main__":
    main()
