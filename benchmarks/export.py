"""ONNX export: inference images/s of onnxruntime against PyTorch on the CPU, same model, same run.

    python -m benchmarks.export                                   # the demo model and resnet50 at 224 px
    python -m benchmarks.export --models demo --batches 1,8 --out benchmarks/results/export-cpu.jsonl
    python -m benchmarks.export --table benchmarks/results/export-cpu.jsonl

Each model is built as attnscope builds it (random weights: speed does not depend
on them), wrapped as ``attnscope export`` wraps it (uint8 in, normalisation inside),
exported with torch's ONNX exporter and run by onnxruntime with as many threads as
PyTorch. The two are timed in alternating rounds, so a noisy machine slows both
alike; the figures are medians, and the outputs are checked to agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from attnscope.data.augment import AugmentConfig, BatchTransform
from attnscope.engine.export import ExportedModel, to_onnx
from attnscope.models import create_model
from attnscope.training.precision import native_bf16
from benchmarks.common import add_result_arguments, append_records, choose, print_table, run_facts

MODELS = {"demo": ("attn_vgg_tiny", 64), "resnet50": ("resnet50", 224)}


def images_per_second(call, images: np.ndarray, rounds: int) -> list[float]:
    call(images)  # warm-up: first-call allocations and kernel choices
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call(images)
        times.append(time.perf_counter() - started)
    return [len(images) / t for t in times]


def measure(name: str, batches: list[int], rounds: int) -> list[dict]:
    import onnxruntime

    model_name, size = MODELS[name]
    model = create_model(model_name, num_classes=2).eval()
    wrapped = ExportedModel(model, BatchTransform(AugmentConfig(), (0.5,) * 3, (0.25,) * 3, size, 3), []).eval()
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    started = time.perf_counter()
    payload = to_onnx(wrapped, example, ["logits"], 18).SerializeToString()
    export_s = time.perf_counter() - started
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    records = []
    for batch in batches:
        images = rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8)

        def run_torch(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return wrapped(torch.from_numpy(x))[0].numpy()

        def run_onnx(x: np.ndarray) -> np.ndarray:
            return session.run(["logits"], {"image": x})[0]

        difference = float(np.abs(run_torch(images) - run_onnx(images)).max())
        torch_rates, onnx_rates = [], []
        for _ in range(rounds):  # alternate, one timed call each, so noise falls on both
            torch_rates += images_per_second(run_torch, images, 1)
            onnx_rates += images_per_second(run_onnx, images, 1)
        # rounded first, so that the record's ratio is the ratio of the figures it prints
        torch_median = round(statistics.median(torch_rates), 2)
        onnx_median = round(statistics.median(onnx_rates), 2)
        records.append(
            {
                "model": name,
                "architecture": model_name,
                "image_size": size,
                "batch": batch,
                "torch_img_per_s": torch_median,
                "onnxruntime_img_per_s": onnx_median,
                "ratio": round(onnx_median / torch_median, 3),
                "max_logit_difference": difference,
                "export_s": round(export_s, 1),
                "rounds": rounds,
                "onnxruntime": onnxruntime.__version__,
                "native_bf16": native_bf16("cpu"),
                **run_facts(),
            }
        )
    return records


def markdown(records: list[dict]) -> str:
    from benchmarks.common import provenance

    lines = [
        "| model | input | batch | PyTorch img/s | onnxruntime img/s | onnxruntime / PyTorch | max logit difference |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} ({r['architecture']}) | {r['image_size']} px | {r['batch']} | {r['torch_img_per_s']:.1f} "
            f"| {r['onnxruntime_img_per_s']:.1f} | {r['ratio']:.2f} | {r['max_logit_difference']:.1e} |"
        )
    bf16 = "with" if records and records[0].get("native_bf16") else "without"
    return (
        "\n".join(lines)
        + f"\n\nMedians of {records[0]['rounds']} alternating rounds; float32, a CPU {bf16} native bf16. "
        + provenance(records)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--batches", default="1,16", help="batch sizes, comma-separated (default 1,16)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per runtime (default 7)")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, markdown):
        return
    batches = [int(b) for b in args.batches.split(",")]
    records = [r for name in choose(parser, args.models, MODELS, "model") for r in measure(name, batches, args.rounds)]
    append_records(args.out, records)
    print("\n".join(json.dumps(r) for r in records))


if __name__ == "__main__":
    main()
