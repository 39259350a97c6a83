"""Forward+backward time and memory of every attention layer, one JSON object per layer.

    python -m benchmarks.layers                    # B=16, C=128, 28x28, k=7 on the CPU
    python -m benchmarks.layers --device cuda --out benchmarks/results/layers-h100.jsonl

Time: the median of ``--repeats`` forward+backward passes, the layers timed in
turn round by round, so that a noisy neighbour slows them alike. Memory on the
CPU: each layer runs in a fresh child process whose allocator returns freed
blocks to the system (MALLOC_MMAP_THRESHOLD_), and the peak resident set of one
pass is read after resetting the high-water mark (/proc/self/clear_refs); on a
GPU, torch.cuda.max_memory_allocated. The CPU figure is good to about 0.25 MB
(the kernel batches its RSS counters), ample at the default size, where layers
take tens to hundreds of MB. ``saved_for_backward_mb`` is exact: the
bytes autograd keeps between forward and backward.

Baseline: ``local_naive`` is the textbook stand-alone self-attention that unfolds
keys and values to (B, C, k*k, H, W); it is checked to compute the same output
as ``LocalSelfAttention``, and the ``local`` record carries both ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.fileio import atomic_write
from attnscope.layers import (
    CBAM,
    GlobalSelfAttention,
    GridAttention,
    LocalSelfAttention,
    SqueezeExcite,
)
from attnscope.profiling import saved_tensor_bytes

LAYERS = ("grid", "se", "se_plain", "cbam", "cbam_plain", "global", "local_naive", "local")
PLAIN = {"se": "se_plain", "cbam": "cbam_plain"}
MB = 2**20


class UnfoldLocalSelfAttention(LocalSelfAttention):
    """The textbook formulation: unfold keys and values to every offset at once."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        k, heads, dim = self.kernel_size, self.heads, self.head_dim
        query, key, value = self.qkv(x).chunk(3, dim=1)
        query = query.reshape(batch, heads, dim, 1, height * width) * self.scale
        key = F.unfold(key, k, padding=k // 2).reshape(batch, heads, dim, k * k, height * width)
        value = F.unfold(value, k, padding=k // 2).reshape(batch, heads, dim, k * k, height * width)
        relative = torch.cat(
            [self.rel_rows[:, None, :].expand(k, k, -1), self.rel_cols[None, :, :].expand(k, k, -1)], dim=-1
        ).reshape(k * k, dim)
        logits = (query * (key + relative.T[:, :, None])).sum(dim=2)
        outside = F.unfold(torch.ones(1, 1, height, width, device=x.device), k, padding=k // 2) == 0
        attention = F.softmax(logits.masked_fill(outside, float("-inf")), dim=2)
        output = (attention[:, :, None] * value).sum(dim=3)
        return output.reshape(batch, self.out_channels, height, width)


class PlainSE(nn.Module):
    """Squeeze-and-Excitation as timm's ``SEModule`` writes it, on an attnscope layer's weights: no tap."""

    def __init__(self, se: SqueezeExcite) -> None:
        super().__init__()
        self.fc1, self.fc2 = se.fc1, se.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class PlainCBAM(nn.Module):
    """CBAM as timm's ``CbamModule`` writes it (channel, then spatial), on an attnscope layer's weights."""

    def __init__(self, cbam: CBAM) -> None:
        super().__init__()
        self.channel, self.spatial = cbam.channel_gate, cbam.spatial_gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.channel
        average = mlp.fc2(F.relu(mlp.fc1(x.mean((2, 3), keepdim=True))))
        maximum = mlp.fc2(F.relu(mlp.fc1(x.amax((2, 3), keepdim=True))))
        x = x * torch.sigmoid(average + maximum)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial.norm(self.spatial.conv(pooled)))


def build(name: str, args: argparse.Namespace) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The layer ``name`` and its inputs at the benchmark's size."""
    torch.manual_seed(0)  # the same inputs for every layer, the same weights for both local ones
    c, s, b = args.channels, args.size, args.batch
    x = torch.randn(b, c, s, s)
    if name == "grid":
        layer: nn.Module = GridAttention(c, c, c // 2)
        inputs: tuple[torch.Tensor, ...] = (x, torch.randn(b, c, max(1, s // 4), max(1, s // 4)))
    elif name in ("se", "se_plain"):
        layer, inputs = SqueezeExcite(c), (x,)
        layer = PlainSE(layer) if name == "se_plain" else layer
    elif name in ("cbam", "cbam_plain"):
        layer, inputs = CBAM(c), (x,)
        layer = PlainCBAM(layer) if name == "cbam_plain" else layer
    elif name == "global":
        layer, inputs = GlobalSelfAttention(c, heads=args.heads), (x,)
    elif name in ("local", "local_naive"):
        cls = LocalSelfAttention if name == "local" else UnfoldLocalSelfAttention
        layer, inputs = cls(c, c, kernel_size=args.kernel, heads=args.heads), (x,)
    else:
        raise SystemExit(f"unknown layer {name!r}; choose from {', '.join(LAYERS)}")
    dtype = getattr(torch, args.dtype)
    layer = layer.to(args.device, dtype)
    return layer, tuple(t.to(args.device, dtype) for t in inputs)


def step(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """One forward and backward pass, gradients dropped first so that each pass allocates them."""
    for parameter in layer.parameters():
        parameter.grad = None
    layer(*inputs).float().square().mean().backward()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def read_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_memory_bytes(layer: nn.Module, inputs: tuple[torch.Tensor, ...], device: str) -> int:
    """Peak memory above the resting level during one forward+backward pass."""
    step(layer, inputs)  # warm-up: lazily initialised kernels and buffers
    for parameter in layer.parameters():
        parameter.grad = None
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resting = torch.cuda.memory_allocated()
        step(layer, inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - resting
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets the peak resident set (VmHWM) to the current one
    resting = read_status("VmRSS")
    step(layer, inputs)
    # The kernel batches its RSS counters per CPU, so both figures are accurate
    # to a fraction of a megabyte; below that a tiny layer can read as negative.
    return max(0, read_status("VmHWM") - resting)


def measure_memory_in_child(name: str, args: argparse.Namespace) -> dict:
    """Run this script for one layer in a fresh process and read its memory figures."""
    command = [sys.executable, "-m", "benchmarks.layers", "--child", name, *args.forwarded]
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    result = subprocess.run(
        command, capture_output=True, text=True, env=environment, cwd=Path(__file__).resolve().parents[1]
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of {name} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_figures(name: str, args: argparse.Namespace) -> dict:
    layer, inputs = build(name, args)
    _, saved = saved_tensor_bytes(lambda: layer(*inputs))
    peak = peak_memory_bytes(layer, inputs, args.device)
    return {"peak_mem_mb": round(peak / MB, 2), "saved_for_backward_mb": round(saved / MB, 2)}


def time_round_robin(layers: dict[str, tuple[nn.Module, tuple]], args: argparse.Namespace) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in layers}
    names = list(layers)
    for round_index in range(args.warmup + args.repeats):
        # Each round starts with the next layer: measured, the one timed right after another
        # runs up to 25% slower, so a fixed order would favour the first.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            layer, inputs = layers[name]
            synchronize(args.device)
            start = time.perf_counter()
            step(layer, inputs)
            synchronize(args.device)
            if round_index >= args.warmup:
                times[name].append((time.perf_counter() - start) * 1000)
        print(f"round {round_index + 1}/{args.warmup + args.repeats}", file=sys.stderr, flush=True)
    return times


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def run(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    layers = {name: build(name, args) for name in args.layers}
    if "local" in layers and "local_naive" in layers:
        with torch.no_grad():
            difference = layers["local"][0](*layers["local"][1]) - layers["local_naive"][0](*layers["local_naive"][1])
        max_abs_diff = difference.abs().max().item()
    times = time_round_robin(layers, args)
    common = {
        "benchmark": "layers",
        "batch": args.batch,
        "channels": args.channels,
        "size": args.size,
        "device": args.device,
        "device_name": device_name(args.device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
    }
    records = {}
    for name, (layer, _inputs) in layers.items():
        q1, median, q3 = quartiles(times[name])
        memory = measure_memory_in_child(name, args) if args.device == "cpu" else memory_figures(name, args)
        record = {
            "layer": name,
            **common,
            "params": sum(p.numel() for p in layer.parameters()),
            "fwd_bwd_ms_median": round(median, 3),
            "fwd_bwd_ms_q1": round(q1, 3),
            "fwd_bwd_ms_q3": round(q3, 3),
            **memory,
        }
        if name.startswith("local"):
            record["kernel_size"] = args.kernel
            record["heads"] = args.heads
        records[name] = record
    for name, plain in PLAIN.items():
        if name in records and plain in records:
            ratio = records[name]["fwd_bwd_ms_median"] / records[plain]["fwd_bwd_ms_median"]
            with torch.no_grad():
                ours, theirs = (layers[n][0](*layers[n][1]) for n in (name, plain))
            records[name].update(
                baseline=plain,
                time_ratio_vs_plain=round(ratio, 3),
                max_abs_diff_vs_plain=(ours - theirs).abs().max().item(),
            )
    if "local" in records and "local_naive" in records:
        local, naive = records["local"], records["local_naive"]
        local.update(
            baseline="local_naive",
            max_abs_diff_vs_naive=max_abs_diff,
            time_ratio_vs_naive=round(local["fwd_bwd_ms_median"] / naive["fwd_bwd_ms_median"], 3),
            peak_mem_ratio_vs_naive=round(local["peak_mem_mb"] / naive["peak_mem_mb"], 3),
            saved_ratio_vs_naive=round(local["saved_for_backward_mb"] / naive["saved_for_backward_mb"], 3),
            memory_goal_met=local["peak_mem_mb"] <= 0.5 * naive["peak_mem_mb"],
        )
    return list(records.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--kernel", type=int, default=7, help="neighbourhood of local attention")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    parser.add_argument("--quick", action="store_true", help="3 timed rounds instead of --repeats")
    parser.add_argument("--out", type=Path, help="also write the JSON lines to this file (atomically)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 3
    size_options = ("batch", "channels", "size", "kernel", "heads", "device", "dtype")
    args.forwarded = [item for option in size_options for item in (f"--{option}", str(getattr(args, option)))]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        torch.manual_seed(0)
        print(json.dumps(memory_figures(args.child, args)))
        return 0
    records = run(args)
    lines = [json.dumps(record) for record in records]
    print("\n".join(lines), flush=True)
    if args.out:
        atomic_write(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
