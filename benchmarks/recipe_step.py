"""The Fashion-MNIST recipe's training step as shipped, against what could make it faster.

    python -m benchmarks.recipe_step --out benchmarks/results/recipe_step-cpu.jsonl
    python -m benchmarks.recipe_step --table benchmarks/results/recipe_step-cpu.jsonl
    python -m benchmarks.recipe_step --channels 32,64,128,128 --no-compile --rounds 2 --steps 1   # a quick check

The model, its options, the batch size, the precision (``auto``: bf16 autocast where the
CPU computes it natively) and channels_last come from the run config (``--config``,
default the shipped ``fashion_mnist``). Variants: ``shipped``; ``compile``
(``nn.Module.compile``: the compilation's seconds are reported apart, since a run pays them
within its budget); one per ``--channels`` (the four stages' widths, the ResNet option
``channels``). Each trains on random 28 px images with the recipe's loss and SGD; the
variants take turns for ``--rounds`` rounds of ``--steps`` steps, so that a shared
machine's drift falls on all of them, and the median step is reported, with its ratio to
``shipped`` from the same run.

Prints one JSON object per variant, then a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from attnscope.engine.config import RunConfig, load_config
from attnscope.errors import ConfigError
from attnscope.models import create_model
from attnscope.training.precision import resolve_precision
from benchmarks.common import add_result_arguments, append_records, native_bf16_text, print_table, run_facts, short_cpu

CLASSES = 10


def parse_channels(text: str) -> list[list[int]]:
    """``"32,64,128,128;32,64,96,96"`` as lists of four widths; "" as none."""
    return [[int(width) for width in group.split(",")] for group in text.split(";") if group.strip()]


def variant_name(channels: list[int] | None, compiled: bool) -> str:
    if compiled:
        return "compile"
    return "shipped" if channels is None else "channels " + "/".join(map(str, channels))


def build_step(config: RunConfig, channels: list[int] | None, compiled: bool) -> tuple[Callable[[], None], dict]:
    """One training step of the recipe's model (``channels`` replacing its stage widths) on fixed
    random images, and the variant's facts; a compiled model is compiled here, and timed."""
    torch.manual_seed(0)
    options = {**config.model.options, **({"channels": channels} if channels is not None else {})}
    model = create_model(config.model.name, num_classes=CLASSES, in_chans=1, **options)
    size, batch = config.data.image_size, config.data.batch_size
    images = torch.randn(batch, 1, size, size)
    labels = torch.randint(0, CLASSES, (batch,))
    if config.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    precision = resolve_precision(config.trainer.precision, "cpu")
    optim = config.optim
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=optim.lr,
        momentum=optim.momentum,
        nesterov=optim.nesterov,
        weight_decay=optim.weight_decay,
    )

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
            loss = F.cross_entropy(model(images), labels, label_smoothing=config.loss.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    if compiled:
        model.compile()
    for _ in range(3):  # kernels built, caches warm; for compile, the compilation
        step()
    facts = {
        "variant": variant_name(channels, compiled),
        "model": config.model.name,
        "channels": channels or list(model.stage_channels),
        "params": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "size": size,
        "precision": precision,
        "channels_last": config.trainer.channels_last,
        "warmup_s": round(time.perf_counter() - started, 1),
    }
    return step, facts


def measure(steps: dict[str, Callable[[], None]], rounds: int, per_round: int) -> dict[str, float]:
    """Median seconds per step of each variant, the variants taking turns round by round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - started) / per_round)
    return {name: statistics.median(values) for name, values in times.items()}


def render_table(records: list[dict]) -> str:
    """One row per variant and run: images/s, the ratio to the shipped step of the same run."""
    lines = [
        "| variant | stage widths | parameters | training images/s | x shipped | compilation | CPU |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in (r for r in records if "variant" in r):
        compilation = f"{r['warmup_s']:.0f} s" if r["variant"] == "compile" else ""
        cpu = f"{short_cpu(r)}, native bf16: {native_bf16_text(r)}"
        lines.append(
            f"| {r['variant']} | {'/'.join(map(str, r['channels']))} | {r['params'] / 1e6:.2f} M | "
            f"{r['train_img_per_s']:,.0f} | {r['x_shipped']:.2f}x | {compilation} | {cpu} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="fashion_mnist", help="run config (default: the shipped fashion_mnist)")
    parser.add_argument("--channels", default="32,64,128,128", help="';'-separated stage widths to try")
    parser.add_argument("--no-compile", action="store_true", help="leave the compiled variant out")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, render_table):
        return
    try:
        alternatives = parse_channels(args.channels)
    except ValueError:
        parser.error(f"--channels {args.channels!r}: give widths as 32,64,128,128, several separated by ';'")
    config = load_config(args.config, [])
    variants = [(None, False), *((None, True) for _ in range(0 if args.no_compile else 1))]
    variants += [(channels, False) for channels in alternatives]
    steps, facts = {}, {}
    for channels, compiled in variants:
        try:
            step, fact = build_step(config, channels, compiled)
        except ConfigError as error:
            parser.error(f"--channels: {error}")
        steps[fact["variant"]], facts[fact["variant"]] = step, fact
    medians = measure(steps, args.rounds, args.steps)
    facts_of_run = run_facts()
    records = []
    for name, seconds in medians.items():
        batch = facts[name]["batch"]
        ratio = medians["shipped"] / seconds
        records.append(
            {**facts[name], "rounds": args.rounds, "steps": args.steps, "step_s": round(seconds, 6)}
            | {"train_img_per_s": round(batch / seconds, 1), "x_shipped": round(ratio, 3), **facts_of_run}
        )
        print(json.dumps(records[-1]), flush=True)
    summary = {
        "summary": "recipe_step",
        "baseline": "shipped",
        "x_shipped": {r["variant"]: r["x_shipped"] for r in records},
    }
    print(json.dumps(summary), flush=True)
    append_records(args.out, [*records, summary])


if __name__ == "__main__":
    main()
