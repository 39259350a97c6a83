"""Render a layer-benchmark JSONL file as the markdown table of the README.

python -m benchmarks.table benchmarks/results/layers-cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def render(records: list[dict]) -> str:
    first = records[0]
    lines = [
        f"B={first['batch']}, C={first['channels']}, {first['size']}x{first['size']}, {first['dtype']}, "
        f"{first['device_name']} ({first['device']}, {first['threads']} threads), torch {first['torch']}, "
        f"median of {first['repeats']}",
        "",
        "| layer | params | fwd+bwd ms (median [q1, q3]) | peak MB | saved for backward MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['layer']} | {r['params']:,} | {r['fwd_bwd_ms_median']:.1f} "
            f"[{r['fwd_bwd_ms_q1']:.1f}, {r['fwd_bwd_ms_q3']:.1f}] | {r['peak_mem_mb']:.1f} | "
            f"{r['saved_for_backward_mb']:.1f} |"
        )
    for r in records:
        if "time_ratio_vs_plain" in r:
            within = "yes" if r["time_ratio_vs_plain"] <= 1.0 else "no"
            lines += [
                "",
                f"`{r['layer']}` against `{r['baseline']}` (timm's formula on the same weights, no tap), same run: "
                f"time x{r['time_ratio_vs_plain']:.2f}; outputs agree to {r['max_abs_diff_vs_plain']:.1e}; "
                f"within 1.0x: {within}.",
            ]
        elif "baseline" in r:
            lines += [
                "",
                f"`{r['layer']}` against `{r['baseline']}` (k={r['kernel_size']}, {r['heads']} heads), same run: "
                f"time x{r['time_ratio_vs_naive']:.2f}, peak memory x{r['peak_mem_ratio_vs_naive']:.2f}, "
                f"saved for backward x{r['saved_ratio_vs_naive']:.2f}; outputs agree to "
                f"{r['max_abs_diff_vs_naive']:.1e}; peak at most 0.5x naive's: "
                f"{'yes' if r['memory_goal_met'] else 'no'}.",
            ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    if not args.results.is_file():
        parser.error(f"{args.results} does not exist; write one with: python -m benchmarks.layers --out {args.results}")
    records = []
    for number, line in enumerate(args.results.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                parser.error(f"{args.results}, line {number}: not JSON ({error.msg}); rerun the benchmark")
    if not records:
        parser.error(f"{args.results} holds no results; rerun the benchmark")
    print(render(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
