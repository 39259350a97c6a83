"""AG-CNN's three stages (Guan et al. 2018) on data where the crop matters, every branch evaluated.

    python -m benchmarks.agcnn_stages --out benchmarks/results/agcnn_stages-cpu.jsonl
    python -m benchmarks.agcnn_stages --quick                  # a smoke run: tiny set, one epoch a stage
    python -m benchmarks.agcnn_stages --table benchmarks/results/agcnn_stages-cpu.jsonl   # README's table

The data: 6,000 Fashion-MNIST items (28 px, real data from Debian's dataset-fashion-mnist)
placed at random on an 84 px canvas among clutter cut from other items, so the item is a
ninth of the image and the rest is distraction: the crop of the global branch's heat map is
what a local branch can read at full resolution. ``agcnn_tiny`` (two ``resnet_tiny``
branches with the small stem, an 11 x 11 last map) trains with ``--stages global,local,fusion``, each stage
from the best weights of the one before; the test split is then evaluated on every branch.
Prints one JSON object per branch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from attnscope.engine.config import load_config
from attnscope.engine.inference import evaluate
from attnscope.engine.run import Run
from attnscope.training.stages import StagePlan, train_stages
from benchmarks.common import add_result_arguments, append_records, print_table, provenance, run_facts

STAGES = ("global", "local", "fusion")
EPOCHS = (6, 4, 6)
LR = (0.002, 0.002, 0.001)


def settings(root: Path, quick: bool, directory: str | None) -> list[str]:
    """The run config: cluttered Fashion-MNIST on an 84 px canvas, AG-CNN with small-stem branches."""
    options = {"count": 200 if quick else 6000, "canvas": 84, "clutter": 6, "seed": 0}
    if directory:
        options["directory"] = directory
    return [
        f"run_dir={root}",
        "model.name=agcnn_tiny",
        "model.options={backbone_options: {stem: small}, tau: 0.7}",
        "data.source=cluttered",
        f"data.source_options={json.dumps(options)}",
        "data.image_size=84",
        "data.mode=L",
        "data.batch_size=64",
        "data.augment={rotation: 0, hflip: true, vflip: false}",
        "loss.name=ce",
        "optim.name=adam",
        "schedule.name=cosine",
        "schedule.warmup_epochs=0",
        "trainer.monitor=val/accuracy",
        "trainer.progress=false",
        "data.progress=false",
        "trainer.seed=0",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 images and one epoch a stage")
    parser.add_argument("--fashion-mnist", metavar="DIR", help="your copy of the IDX files (default: Debian's)")
    parser.add_argument("--workdir", help="keep the staged run here (default: a temporary folder)")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, render_table):
        return
    plan = StagePlan(STAGES, (1, 1, 1) if args.quick else EPOCHS, LR)
    with tempfile.TemporaryDirectory(prefix="attnscope-agcnn-") as scratch:
        root = Path(args.workdir or scratch) / "agcnn-cluttered"
        started = time.perf_counter()
        train_stages(load_config(None, settings(root, args.quick, args.fashion_mnist)), plan)
        seconds = time.perf_counter() - started
        with Run.open(root, progress=False) as run:
            metrics = evaluate(run).metrics
    records = []
    for branch, values in metrics["branches"].items():
        record = {
            "benchmark": "agcnn_stages",
            "branch": branch,
            "test_auc": round(values["auc"], 4),
            "test_images": metrics["rows"],
            "stage_epochs": list(plan.epochs or ()),
            "stage_lr": list(plan.lr or ()),
            "train_s": round(seconds, 1),
            "quick": args.quick,
            **run_facts(),
        }
        if branch == "fusion":
            record["test_accuracy"] = round(metrics["accuracy"], 4)
        records.append(record)
        print(json.dumps(record), flush=True)
    fusion, global_ = (next(r["test_auc"] for r in records if r["branch"] == b) for b in ("fusion", "global"))
    summary = {"summary": "agcnn_stages", "fusion_at_least_global": fusion >= global_, "quick": args.quick}
    print(json.dumps(summary), flush=True)
    append_records(args.out, [*records, summary])


def render_table(records: list[dict]) -> str:
    """The latest full run's branches: test AUC (macro one-vs-rest over the 10 classes)."""
    rows = [r for r in records if r.get("benchmark") == "agcnn_stages" and not r.get("quick")]
    latest = {r["branch"]: r for r in rows}
    lines = ["| branch | test AUC (10 classes, one-vs-rest mean) |", "|---|---:|"]
    lines += [f"| {name} | {latest[name]['test_auc']:.4f} |" for name in STAGES if name in latest]
    return "\n".join([*lines, "", provenance(list(latest.values()))]) if latest else "(no full run recorded)"


if __name__ == "__main__":
    main()
