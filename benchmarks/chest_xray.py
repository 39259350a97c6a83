"""The chest X-ray recipe on the generated films, end to end through the files a radiology department hands over.

    python -m benchmarks.chest_xray --out benchmarks/results/chest_xray-cpu.jsonl
    python -m benchmarks.chest_xray --quick                  # a smoke run: 40 films, one epoch
    python -m benchmarks.chest_xray --table benchmarks/results/chest_xray-cpu.jsonl   # README's table

``write_chest_xray_set`` writes 1,000 generated films (256 px, 12 bits in 16-bit PNGs, NIH
ChestX-ray14's CSV, box file and test list); the shipped ``chest_xray_generated`` recipe
trains DenseNet-121 on them at 128 px; the test split (the test list's 200 films) is
evaluated per finding at the thresholds chosen on validation, and each finding's maps are
scored against the boxes on the test films where it is present (pointing game and the
energy inside the boxes), beside a map that knows nothing: a Gaussian at the centre.
Then AG-CNN on DenseNet-121 (Guan et al. 2018) trains on the same films in its three stages
and each branch is evaluated. Prints one JSON object per finding and model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from attnscope.data.sources.chest import FINDINGS
from attnscope.data.sources.chest_files import write_chest_xray_set
from attnscope.engine.config import load_config
from attnscope.engine.inference import evaluate
from attnscope.engine.run import DataSelection, Run
from attnscope.explain.findings import finding_localisation
from attnscope.explain.scores import localisation_scores
from attnscope.training import train
from attnscope.training.stages import StagePlan, train_stages
from benchmarks.common import add_result_arguments, append_records, print_table, provenance, run_facts

METHODS = ["gradcam", "gradcam++", "layercam"]
AGCNN_PLAN = StagePlan(("global", "local", "fusion"), (6, 3, 3), (0.001, 0.001, 0.0005))


def settings(films: Path, run_dir: Path, quick: bool, model: str | None = None) -> list[str]:
    """The shipped recipe pointed at ``films``; quick: one epoch at 32 px."""
    options = {"csv_path": "Data_Entry_2017.csv", "image_root": "images", "boxes_csv": "BBox_List_2017.csv",
               "test_list": "test_list.txt", "train_list": "train_val_list.txt"}  # fmt: skip
    changes = [f"data.source_options.{k}={films / v}" for k, v in options.items()]
    changes += [f"run_dir={run_dir}", "trainer.progress=false", "data.progress=false"]
    changes += [f"model.name={model}"] if model else []
    return changes + (["trainer.epochs=1", "data.image_size=32"] if quick else [])


def centre_baseline(run: Run, count: int) -> dict[str, dict[str, float]]:
    """Per finding: the localisation of a Gaussian at the image's centre (sigma a quarter of the side)."""
    size = run.image_size
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    centre = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * (size / 4) ** 2))
    found: dict[str, dict[str, list[float]]] = {}
    for batch in run.loader(DataSelection(split="test")):
        boxed = batch["mask"].flatten(1).any(1)
        for index, name in enumerate(run.classes):
            chosen = torch.nonzero((batch["label"][:, index] == 1) & boxed).flatten()
            if len(chosen):
                maps = (centre / centre.max()).expand(len(chosen), size, size)
                for score, values in localisation_scores(maps, batch["mask"][chosen][:, 0]).items():
                    found.setdefault(name, {}).setdefault(score, []).extend(values.tolist())
    return {name: {s: sum(v[:count]) / len(v[:count]) for s, v in scores.items()} for name, scores in found.items()}


def densenet_records(films: Path, root: Path, quick: bool) -> list[dict]:
    started = time.perf_counter()
    train(load_config("chest_xray_generated", settings(films, root / "densenet121", quick)))
    seconds = time.perf_counter() - started
    with Run.open(root / "densenet121", progress=False) as run:
        metrics = evaluate(run).metrics
        count = 20 if quick else 200
        maps = finding_localisation(run, run.loader(DataSelection(split="test")), METHODS, count)
        centre = centre_baseline(run, count)
    records = []
    for index, finding in enumerate(FINDINGS):
        record = {"benchmark": "chest_xray", "model": "densenet121", "finding": finding}
        for key in ("auc", "ap", "threshold", "sensitivity_youden", "specificity_youden", "positives", "rows"):
            record[key] = metrics[f"{key}_per_class"][index]
        for method, scores in {**maps.get(finding, {}), "centre": centre.get(finding, {})}.items():
            record |= {f"{method}_{score}": round(value, 4) for score, value in scores.items()}
        records.append({**record, "train_s": round(seconds, 1), "quick": quick})
    return records


def agcnn_records(films: Path, root: Path, quick: bool) -> list[dict]:
    plan = StagePlan(AGCNN_PLAN.stages, (1, 1, 1), AGCNN_PLAN.lr) if quick else AGCNN_PLAN
    started = time.perf_counter()
    config = load_config("chest_xray_generated", settings(films, root / "agcnn", quick, "agcnn_densenet121"))
    train_stages(config, plan)
    seconds = time.perf_counter() - started
    with Run.open(root / "agcnn", progress=False) as run:
        branches = evaluate(run).metrics["branches"]
    return [
        {
            "benchmark": "chest_xray",
            "model": f"agcnn_densenet121:{branch}",
            "finding": finding,
            "auc": values["auc_per_class"][index],
            "stage_epochs": list(plan.epochs or ()),
            "train_s": round(seconds, 1),
            "quick": quick,
        }
        for branch, values in branches.items()
        for index, finding in enumerate(FINDINGS)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 films at 64 px, one epoch a run")
    parser.add_argument("--workdir", help="keep the films and runs here (default: a temporary folder)")
    parser.add_argument("--no-agcnn", action="store_true", help="the DenseNet-121 recipe only")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, render_table):
        return
    with tempfile.TemporaryDirectory(prefix="attnscope-chest-") as scratch:
        root = Path(args.workdir or scratch)
        films = root / "films"
        write_chest_xray_set(films, count=40 if args.quick else 1000, size=64 if args.quick else 256, replace=True)
        records = densenet_records(films, root, args.quick)
        records += [] if args.no_agcnn else agcnn_records(films, root, args.quick)
    facts = run_facts()
    records = [{**record, **facts} for record in records]
    for record in records:
        print(json.dumps(record), flush=True)
    append_records(args.out, records)


def _number(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def render_table(records: list[dict]) -> str:
    """The latest full run: per finding, DenseNet-121's test figures and its maps' pointing game beside the
    centre's, and AG-CNN's fusion branch."""
    full = [r for r in records if r.get("benchmark") == "chest_xray" and not r.get("quick")]
    densenet = {r["finding"]: r for r in full if r["model"] == "densenet121"}
    fusion = {r["finding"]: r for r in full if r["model"] == "agcnn_densenet121:fusion"}
    if not densenet:
        return "(no full run recorded)"
    lines = [
        "| finding | test positives | DenseNet-121 AUC | sensitivity / specificity | pointing game: Grad-CAM "
        "| Grad-CAM++ | LayerCAM | centre | AG-CNN fusion AUC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for finding in FINDINGS:
        r = densenet[finding]
        points = [_number(r.get(f"{m}_pointing_game")) for m in (*METHODS, "centre")]
        agcnn = _number(fusion.get(finding, {}).get("auc"))
        lines.append(
            f"| {finding} | {r['positives']} | {_number(r['auc'])} | {_number(r['sensitivity_youden'])} / "
            f"{_number(r['specificity_youden'])} | {' | '.join(points)} | {agcnn} |"
        )
    return "\n".join([*lines, "", provenance(list(densenet.values()) + list(fusion.values()))])


if __name__ == "__main__":
    main()
