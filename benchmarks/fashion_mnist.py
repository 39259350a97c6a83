"""Fashion-MNIST from scratch on this machine: test accuracy, wall time, images per second.

    python -m benchmarks.fashion_mnist --out benchmarks/results/fashion_mnist-cpu.jsonl
    python -m benchmarks.fashion_mnist --set trainer.epochs=1 --set model.options.width=8     # a quick check

Trains the shipped ``fashion_mnist`` config (``attnscope train --config fashion_mnist``)
on the 60,000 training images (10% held out for validation, which alone chooses
the kept epoch) and reports accuracy on the official 10,000 test images, which
nothing else looks at. Wall time counts everything from reading the data to the
last epoch (the time-budget probe included); images per second are training images
seen per second of training. The shipped config plans its epochs within a 570 s
budget (``--set trainer.time_budget_s=null`` runs all 15). The test set is also scored
with flip test-time augmentation (``evaluate --tta``), reported beside; the goal is
judged on the plain score, the recipe's as shipped, so that no choice is made by
looking at test figures.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from attnscope.engine.config import load_config
from attnscope.engine.inference import EvaluateOptions, evaluate
from attnscope.engine.run import Run
from attnscope.engine.rundir import RunPaths, read_json, read_metrics_csv
from attnscope.models.resnet import TINY_WIDTH, stage_planes
from attnscope.training.precision import resolve_precision
from attnscope.training.train import train
from benchmarks.common import add_result_arguments, append_records, native_bf16_text, print_table, run_facts

GOAL_ACCURACY = 0.95
GOAL_SECONDS = 600


def meets_goal(record: dict) -> bool:
    """The issue's goal: the official test set at ``GOAL_ACCURACY`` or better within ``GOAL_SECONDS`` of wall time."""
    return record["test_accuracy"] >= GOAL_ACCURACY and record["wall_s"] <= GOAL_SECONDS


def epochs_text(record: dict) -> str:
    """``6``; for a run planned by a time budget ``6 (570 s budget)``, and where its guard acted
    (records since budget.json), every plan in turn, ``4, re-planned 6 -> 4 (570 s budget)``, or
    ``5 of 7 planned, stopped (570 s budget)``."""
    budget = record.get("time_budget_s")
    if not budget:
        return str(record["epochs"])
    journal = record.get("budget") or {}
    actions = [event["action"] for event in journal.get("events", [])]
    if not actions:
        return f"{record['epochs']} ({budget:.0f} s budget)"
    if "stopped" in actions:
        return f"{record['epochs']} of {journal['planned_epochs']} planned, stopped ({budget:.0f} s budget)"
    plans = [journal["planned_epochs"], *(e["epochs"] for e in journal["events"] if e["action"] == "replanned")]
    return f"{record['epochs']}, re-planned {' -> '.join(map(str, plans))} ({budget:.0f} s budget)"


def stage_widths(record: dict) -> str:
    """The network's four stage widths, ``32/64/128/256``: the ``channels`` option, or ``width`` doubling."""
    options = record.get("model_options", {})
    return "/".join(str(w) for w in stage_planes(options.get("width", TINY_WIDTH), options.get("channels")))


def render_table(records: list[dict]) -> str:
    """One row per run: stage widths, epochs, validation and test accuracy, wall time, training
    images per second, CPU, whether it reached the target accuracy in time."""
    lines = [
        "| stage widths | epochs | validation accuracy | test accuracy | with flip TTA | wall time | "
        f"training images/s | CPU | reached {GOAL_ACCURACY} within {GOAL_SECONDS} s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in records:
        answer = native_bf16_text(r)
        bf16 = f", native bf16: {answer}" if answer else ""
        # Records before 2026-11-22 kept only the architecture, not the CPU's model name.
        cpu = f"{r['machine']}{bf16}" if r["machine"] not in ("x86_64", "aarch64") else "not recorded"
        tta = f"{r['test_accuracy_tta']:.4f}" if "test_accuracy_tta" in r else "not measured"
        lines.append(
            f"| {stage_widths(r)} | {epochs_text(r)} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {tta} | "
            f"{r['wall_s']:.0f} s | {r['train_img_per_s']:,.0f} | {cpu} | {'yes' if meets_goal(r) else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="fashion_mnist", help="run config (default: the shipped fashion_mnist)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--workdir", help="keep the run here (default: a temporary folder)")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, render_table):
        return
    with tempfile.TemporaryDirectory(prefix="attnscope-fmnist-") as scratch:
        run_dir = Path(args.workdir or scratch) / "run"
        config = load_config(
            args.config, [*args.set, f"run_dir={run_dir}", "trainer.progress=false", "data.progress=false"]
        )
        started = time.perf_counter()
        train(config)
        wall = time.perf_counter() - started
        paths = RunPaths(run_dir)
        history = read_metrics_csv(paths.metrics)
        best = read_json(paths.best)
        with Run.open(run_dir, progress=False) as run:
            test = evaluate(run).metrics
            test_tta = evaluate(run, EvaluateOptions(tta=True)).metrics
        train_rows = read_json(paths.data)["counts"]["train"]["rows"]
        journal = read_json(paths.budget) if paths.budget.exists() else None
    train_seconds = sum(row["seconds"] for row in history)
    budget = config.trainer.time_budget_s
    record = {
        "benchmark": "fashion_mnist",
        "config": args.config,
        "overrides": args.set,
        "model": config.model.name,
        "model_options": config.model.options,
        "epochs": len(history),
        "time_budget_s": budget,
        "budget": journal,
        "best_epoch": best["epoch"] + 1,
        "val_accuracy": round(best["metrics"]["val/accuracy"], 4),
        "test_accuracy": round(test["accuracy"], 4),
        "test_accuracy_tta": round(test_tta["accuracy"], 4),
        "test_images": test["rows"],
        "wall_s": round(wall, 1),
        "train_s": round(train_seconds, 1),
        "train_img_per_s": round(train_rows * len(history) / train_seconds, 1),
        "precision": resolve_precision(config.trainer.precision, config.trainer.accelerator),
        **run_facts(),
    }
    record[f"goal_{GOAL_ACCURACY}_in_{GOAL_SECONDS}s"] = meets_goal(record)
    print(json.dumps(record), flush=True)
    append_records(args.out, [record])


if __name__ == "__main__":
    main()
