"""How fast each explanation method maps images: images/s, and its cost in forward passes of the same model.

    python -m benchmarks.cam_speed                                  # the demo model and resnet50 at 224 px
    python -m benchmarks.cam_speed --models demo --methods gradcam,scorecam --rounds 5
    python -m benchmarks.cam_speed --out benchmarks/results/cam_speed-cpu.jsonl
    python -m benchmarks.cam_speed --table benchmarks/results/cam_speed-cpu.jsonl

Each model is built as attnscope builds it (random weights: speed does not depend
on them), in eval mode, its CAM methods at its default target layer. A plain
forward pass of the same images is timed in the same rounds, so the cost of a
method reads as "forward passes per map" whatever the machine's speed. Methods
that run one pass per channel, window, step or sample map fewer images
(``--slow-images``); figures are medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch

from benchmarks.common import add_result_arguments, append_records, choose, print_table, run_facts

MODELS = {"demo": ("attn_vgg_tiny", 64), "resnet50": ("resnet50", 224)}
SLOW = ("scorecam", "ablationcam", "occlusion", "integrated_gradients", "smoothgrad")


def timed(call, rounds: int, warm_up: bool = True) -> float:
    """Median seconds of ``call()`` over ``rounds``, after one warm-up call unless told not to (a method that
    makes thousands of passes warms up in its first batch)."""
    if warm_up:
        call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(name: str, methods: list[str], args: argparse.Namespace) -> list[dict]:
    from attnscope.explain.methods import create_cam
    from attnscope.layers.tap import capture_attention
    from attnscope.models import create_model
    from attnscope.training.precision import native_bf16

    architecture, size = MODELS[name]
    model = create_model(architecture, num_classes=2).eval()
    generator = torch.Generator().manual_seed(0)
    records = []
    has_taps = bool(_capture(model, torch.zeros(1, 3, size, size), capture_attention))
    for method in methods:
        if method == "attention" and not has_taps:
            continue  # a model without attention has no attention to map
        count = args.slow_images if method in SLOW else args.images
        images = torch.randn(count, 3, size, size, generator=generator)
        forward = timed(functools.partial(_forward, model, images), args.rounds)
        if method == "attention":
            seconds = timed(functools.partial(_capture, model, images, capture_attention), args.rounds)
        else:
            built = create_cam(method, model, batch_size=args.batch_size)
            alone = method in SLOW and name == "resnet50"  # minutes a call: one round, no warm-up
            seconds = timed(functools.partial(built.compute, images), 1 if alone else args.rounds, not alone)
        seconds = round(seconds, 4)  # the rate below is that of the figure recorded
        records.append(
            {
                "model": name,
                "architecture": architecture,
                "image_size": size,
                "method": method,
                "images": count,
                "seconds": seconds,
                "images_per_s": round(count / seconds, 3),
                "forward_images_per_s": round(count / forward, 2),
                "forwards_per_map": round(seconds / forward, 1),
                "batch_size": args.batch_size,
                "rounds": args.rounds,
                "native_bf16": native_bf16("cpu"),
                **run_facts(),
            }
        )
    return records


@torch.no_grad()
def _forward(model: torch.nn.Module, images: torch.Tensor) -> None:
    model(images)


@torch.no_grad()
def _capture(model: torch.nn.Module, images: torch.Tensor, capture_attention) -> dict:
    with capture_attention(model, detach=True) as maps:
        model(images)
    return {name: values for name, values in maps.items() if values.dim() == 4}


def markdown(records: list[dict]) -> str:
    from benchmarks.common import provenance

    lines = [
        "| model | method | images/s | cost in forward passes | images timed |",
        "|---|---|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} ({r['image_size']} px) | {r['method']} | {r['images_per_s']:.3g} "
            f"| {r['forwards_per_map']:,.1f} | {r['images']} |"
        )
    bf16 = "with" if records and records[0].get("native_bf16") else "without"
    return (
        "\n".join(lines)
        + f"\n\nfloat32, random weights, batches of {records[0]['images']} images (the one-pass methods) or "
        f"fewer (the slow ones), extra passes in batches of {records[0]['batch_size']}; medians of up to "
        f"{records[0]['rounds']} rounds; a CPU {bf16} native bf16. " + provenance(records)
    )


def main() -> None:
    from attnscope.names import EXPLAIN_METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--methods", default=",".join(EXPLAIN_METHODS), help="comma-separated (default: every one)")
    parser.add_argument("--images", type=int, default=8, help="images per call of the one-pass methods (default 8)")
    parser.add_argument("--slow-images", type=int, default=1, help="images per call of the slow methods (default 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="inputs per extra pass (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3; the slow ones at 224 px: 1)")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, markdown):
        return
    methods = choose(parser, args.methods, EXPLAIN_METHODS, "method")
    records = [r for name in choose(parser, args.models, MODELS, "model") for r in measure(name, methods, args)]
    append_records(args.out, records)
    print("\n".join(json.dumps(r) for r in records))


if __name__ == "__main__":
    main()
