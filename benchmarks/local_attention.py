"""Local self-attention against the 3x3 convolution it replaces: one layer, and whole networks.

    python -m benchmarks.local_attention --out benchmarks/results/local_attention-cpu.jsonl
    python -m benchmarks.local_attention --table benchmarks/results/local_attention-cpu.jsonl
    python -m benchmarks.local_attention --parts layers --sizes 28 --quick      # a quick look

Part ``layers``: forward+backward milliseconds per image of ``LocalSelfAttention``
(k=7, 8 heads, C channels in and out) by each formulation of
:mod:`attnscope.layers.neighbourhood`, and of ``Conv2d(C, C, 3, padding=1)``, at each
size, in float32 and under bfloat16 autocast.

Part ``networks``: training images per second of two pairs, each network with local
attention in place of its 3x3 convolutions against the same network with them:
``resnet_tiny`` (small stem, width 32, one channel, 28 px, batch 128) and
``local_resnet26`` / ``resnet26`` at 224 px. The goal is a ratio of at least 0.5.
``--layout channels_last`` times both networks of a pair in that memory format.

Part ``crossover``: milliseconds per image of the ``shifted`` and ``dense`` formulations
alone (8 heads, k=7, float32) at each (head width, size) in ``CROSSOVER``: the data
behind ``auto``'s choice between them.

Each comparison times its members in turn, round by round (a noisy neighbour slows
them alike), and reports medians; the ratios are what transfers between machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.layers import LocalSelfAttention
from attnscope.models import create_model
from attnscope.training.precision import native_bf16
from benchmarks.common import add_result_arguments, append_records, choose, print_table, run_facts

PARTS = ("layers", "networks", "crossover")
CROSSOVER = [(4, 9), (4, 14), (8, 14), (8, 28), (16, 14), (16, 28), (32, 14), (32, 28), (64, 14), (64, 28)]
PRECISIONS = ("float32", "bf16")
GOAL_RATIO = 0.5
NETWORKS = {
    # name: (model, options, input channels, size, batch); built with attn="local" and attn=None
    "resnet_tiny_28px": ("resnet_tiny", {"width": 32, "stem": "small"}, 1, 28, 128),
    "resnet26_224px": ("local_resnet26", {}, 3, 224, 8),
}
LAYER_IMPLEMENTATIONS = ("auto", "shifted", "dense", "reference")


def interleaved_medians(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each step, the steps timed in turn each round after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds + 1):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            if round_index:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def layer_step(layer: nn.Module, x: torch.Tensor, precision: str) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        with autocast(precision):
            output = layer(x)
        output.float().square().mean().backward()

    return step


def layer_records(size: int, precision: str, args: argparse.Namespace) -> list[dict]:
    """Every formulation and the convolution at one size and precision, ms per image."""
    channels, batch = args.channels, max(1, args.pixels_per_batch // (size * size))
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size)
    layers: dict[str, nn.Module] = {"conv3x3": nn.Conv2d(channels, channels, 3, padding=1, bias=False)}
    for implementation in LAYER_IMPLEMENTATIONS:
        if implementation == "reference" and size > args.reference_max_size:
            continue  # minutes a pass at 224 px: measured where it fits
        if implementation == "dense" and size > args.dense_max_size:
            continue  # (H*W)^2 scores a head: 80 GB at 224 px
        layers[f"local_{implementation}"] = LocalSelfAttention(channels, channels, 7, 8, implementation=implementation)
    medians = interleaved_medians({n: layer_step(m, x, precision) for n, m in layers.items()}, args.rounds)
    conv = medians["conv3x3"]
    return [
        {
            "part": "layers",
            "layer": name,
            "size": size,
            "precision": precision,
            "channels": channels,
            "batch": batch,
            "ms_per_image": round(1000 * seconds / batch, 3),
            "time_vs_conv3x3": round(seconds / conv, 2),
        }
        for name, seconds in medians.items()
    ]


def crossover_records(args: argparse.Namespace) -> list[dict]:
    """``shifted`` against ``dense`` where ``auto`` has to choose, and what it chose."""
    from attnscope.layers.neighbourhood import choose_implementation, local_attention

    records = []
    for head_dim, size in CROSSOVER:
        batch = max(1, args.pixels_per_batch * 4 // (size * size * head_dim))
        torch.manual_seed(0)
        shapes = [(batch, 8, head_dim, size, size)] * 3 + [(7, head_dim // 2)] * 2
        inputs = [torch.randn(shape, requires_grad=True) for shape in shapes]

        def step(implementation: str, inputs: list[torch.Tensor] = inputs) -> None:
            output, _ = local_attention(*inputs, 7, implementation=implementation)
            output.square().mean().backward()

        medians = interleaved_medians({i: (lambda i=i: step(i)) for i in ("shifted", "dense")}, args.rounds)
        faster = min(medians, key=medians.__getitem__)
        records.append(
            {
                "part": "crossover",
                "head_dim": head_dim,
                "size": size,
                "batch": batch,
                **{f"{i}_ms_per_image": round(1000 * t / batch, 3) for i, t in medians.items()},
                "faster": faster,
                "auto_chooses": choose_implementation(size, size, 7, head_dim),
            }
        )
    return records


def network_step(model: nn.Module, images: torch.Tensor, precision: str) -> Callable[[], None]:
    labels = torch.zeros(images.shape[0], dtype=torch.long)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with autocast(precision):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def network_record(setting: str, precision: str, args: argparse.Namespace) -> dict:
    name, options, channels, size, batch = NETWORKS[setting]
    torch.manual_seed(0)
    layout = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    images = torch.randn(batch, channels, size, size).contiguous(memory_format=layout)
    models = {
        label: create_model(name, num_classes=10, in_chans=channels, **options, attn=attn)
        .train()
        .to(memory_format=layout)  # type: ignore[call-overload]
        for label, attn in (("local", "local"), ("conv3x3", None), ("local_reference", "local"))
    }
    for module in models["local_reference"].modules():
        if isinstance(module, LocalSelfAttention):
            module.implementation = "reference"
    medians = interleaved_medians({n: network_step(m, images, precision) for n, m in models.items()}, args.rounds)
    local, conv = batch / medians["local"], batch / medians["conv3x3"]
    reference = batch / medians["local_reference"]
    return {
        "part": "networks",
        "network": setting,
        "precision": precision,
        "layout": args.layout,
        "batch": batch,
        "size": size,
        "local_img_per_s": round(local, 2),
        "conv3x3_img_per_s": round(conv, 2),
        "ratio": round(local / conv, 3),
        "local_reference_img_per_s": round(reference, 2),
        "speedup_vs_reference": round(local / reference, 2),
        "goal_ratio": GOAL_RATIO,
        "goal_met": local / conv >= GOAL_RATIO,
    }


def render_table(records: list[dict]) -> str:
    """Two tables: whole networks (the goal), then one layer per size and precision."""
    networks = {
        (r["network"], r["precision"], r.get("layout", "contiguous")): r for r in records if r.get("part") == "networks"
    }
    lines = [
        "| network | precision | layout | local attention, `auto` (img/s) | local attention, `reference` (img/s) "
        "| 3x3 convolutions (img/s) | ratio auto / conv | at least 0.5 |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for (_, _, layout), r in networks.items():
        met = "yes" if r["goal_met"] else "no"
        lines.append(
            f"| {r['network']} | {r['precision']} | {layout} | {r['local_img_per_s']:.1f} "
            f"| {r.get('local_reference_img_per_s', float('nan')):.1f} | {r['conv3x3_img_per_s']:.1f} "
            f"| {r['ratio']:.3f} | {met} |"
        )
    layers = {(r["size"], r["precision"], r["layer"]): r for r in records if r.get("part") == "layers"}
    names = list(dict.fromkeys(key[2] for key in layers))
    lines += ["", "| size | precision | " + " | ".join(f"{n} ms/img (x conv)" for n in names) + " |"]
    lines.append("|---|---|" + "---:|" * len(names))
    for size, precision in dict.fromkeys(key[:2] for key in layers):
        cells = []
        for name in names:
            r = layers.get((size, precision, name))
            cells.append(f"{r['ms_per_image']:.2f} ({r['time_vs_conv3x3']:.1f})" if r else "")
        lines.append(f"| {size} px | {precision} | " + " | ".join(cells) + " |")
    crossover = [r for r in records if r.get("part") == "crossover"]
    if crossover:
        lines += ["", "| head width | size | shifted ms/img | dense ms/img | faster | `auto` takes |"]
        lines.append("|---:|---|---:|---:|---|---|")
        for r in crossover:
            lines.append(
                f"| {r['head_dim']} | {r['size']} px | {r['shifted_ms_per_image']:.2f} | "
                f"{r['dense_ms_per_image']:.2f} | {r['faster']} | {r['auto_chooses']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--sizes", default="28,56,224", help="layer sizes in pixels")
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--channels", type=int, default=32, help="layer width (resnet_tiny's first stage)")
    parser.add_argument("--pixels-per-batch", type=int, default=32 * 28 * 28, help="layer batch = this / size^2")
    parser.add_argument("--reference-max-size", type=int, default=56)
    parser.add_argument("--dense-max-size", type=int, default=28)
    parser.add_argument(
        "--layout",
        choices=("contiguous", "channels_last"),
        default="contiguous",
        help="memory format of the networks and their input (part networks)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, render_table):
        return
    if args.quick:
        args.rounds = 2
    parts = choose(parser, args.parts, PARTS, "part")
    precisions = choose(parser, args.precisions, PRECISIONS, "precision")
    facts = {**run_facts(), "native_bf16": native_bf16("cpu"), "rounds": args.rounds}
    networks = choose(parser, args.networks, NETWORKS, "network")

    def emit(new: list[dict]) -> None:
        for record in new:
            record.update(facts)
            print(json.dumps(record), flush=True)
        append_records(args.out, new)  # as they come: a long run stopped keeps what it measured

    if "crossover" in parts:
        emit(crossover_records(args))
    for precision in precisions:
        if "layers" in parts:
            for size in (int(s) for s in args.sizes.split(",")):
                emit(layer_records(size, precision, args))
        if "networks" in parts:
            for network in networks:
                emit([network_record(network, precision, args)])


if __name__ == "__main__":
    main()
