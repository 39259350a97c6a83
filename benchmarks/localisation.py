"""Does the attention point at what matters? Attention against every CAM on the same models.

    python -m benchmarks.localisation --out benchmarks/results/localisation-cpu.jsonl
    python -m benchmarks.localisation --quick            # a smoke run: tiny sets, 1 epoch
    python -m benchmarks.localisation --table benchmarks/results/localisation-cpu.jsonl   # README's table

Trains the same small attention model (attn_vgg_tiny, grid attention on pool-3
and pool-4) on

- ``cluttered``: Fashion-MNIST items placed among clutter on a canvas, the item's
  box as the mask (real data from Debian's dataset-fashion-mnist);
- ``lesions``: generated lesions with their masks, without mask supervision;
- ``lesions_supervised``: the same with AttnMel-style supervision (Dice between
  each tap and the mask),
- ``lesions_supervised_10pct``: the same supervision with the masks of 10% of the
  training images only (``data.mask_fraction``; the rest train by the
  classification loss alone),

then scores every attention tap and every CAM on test images: pointing game,
energy, Jaccard (map >= 0.5), deletion and insertion AUC. Prints one JSON object
per (setting, method), then a summary object with the goals.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from attnscope.engine.config import load_config
from attnscope.engine.run import Run
from attnscope.engine.rundir import RunPaths, read_json
from attnscope.engine.train import train
from attnscope.explain.explainer import ExplainOptions, explain
from benchmarks.common import add_result_arguments, append_records, choose, print_table


def settings_for(name: str, quick: bool) -> list[str]:
    """The run config of one setting, as dotted settings over the defaults."""
    shared = [
        "model.name=attn_vgg_tiny",
        "trainer.progress=false",
        "data.progress=false",
        "optim.name=adam",
        "optim.lr=0.001",
        "schedule.name=cosine",
        "schedule.warmup_epochs=1",
        "trainer.seed=0",
    ]
    if name == "cluttered":
        count = 600 if quick else 12000
        return shared + [
            "data.source=cluttered",
            f"data.source_options={{count: {count}, canvas: 64, clutter: 4, seed: 0}}",
            "data.image_size=64",
            "data.mode=L",
            "data.batch_size=64",
            # flips and crops (the mask follows); no vertical flips: garments have an up
            "data.augment={rotation: 0, hflip: true, vflip: false, crop_scale: [0.7, 1.0]}",
            "loss.name=ce",
            f"trainer.epochs={1 if quick else 16}",
            "trainer.monitor=val/accuracy",
        ]
    count = 300 if quick else 4000
    lesion = shared + [
        "data.source=synthetic_lesions",
        f"data.source_options={{count: {count}, size: 80, seed: 0}}",
        "data.image_size=64",
        "data.batch_size=32",
        "model.options={normalize: sigmoid}",
        f"trainer.epochs={1 if quick else 15}",
    ]
    if name.startswith("lesions_supervised"):
        lesion += ["supervision.kind=dice", "supervision.weights={pool3: 0.1, pool4: 0.1}"]
    if name == "lesions_supervised_10pct":
        lesion += ["data.mask_fraction=0.1"]
    return lesion


SETTINGS = ("cluttered", "lesions", "lesions_supervised", "lesions_supervised_10pct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sets and one epoch: checks the script runs")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {SETTINGS}")
    parser.add_argument("--images", type=int, default=500, help="test images scored per setting (default 500)")
    parser.add_argument("--steps", type=int, default=8, help="steps of the deletion/insertion curves")
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--road", action="store_true", help="also score ROAD (slow: eight imputed images a map)")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, render_table):
        return
    chosen = choose(parser, args.settings, SETTINGS, "setting")
    records = []
    with tempfile.TemporaryDirectory(prefix="attnscope-localisation-") as scratch:
        root = Path(args.workdir or scratch)
        for name in chosen:
            started = time.perf_counter()
            run_dir = root / name
            config = load_config(None, settings_for(name, args.quick) + [f"run_dir={run_dir}"])
            train(config)
            seconds = time.perf_counter() - started
            best = read_json(RunPaths(run_dir).best)
            count = min(args.images, 40) if args.quick else args.images
            options = ExplainOptions(count=count, steps=args.steps, road=args.road)
            result = explain(Run.open(run_dir, progress=False), options)
            for method, scores in result.summary.items():
                record = {
                    "setting": name,
                    "method": method,
                    "train_s": round(seconds, 1),
                    "val_auc": best["metrics"].get("val/auc"),
                    "val_accuracy": best["metrics"].get("val/accuracy"),
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()},
                }
                records.append(record)
                print(json.dumps(record), flush=True)
    summary = {"summary": "localisation", "quick": args.quick, "goals": goals(records)}
    print(json.dumps(summary), flush=True)
    append_records(args.out, [*records, summary])


def render_table(records: list[dict]) -> str:
    """One row per (setting, method) of the last run in ``records``: classification, then map scores."""
    last = [r for r in records if "setting" in r]
    seen: dict[tuple[str, str], dict] = {}
    for record in last:
        seen[(record["setting"], record["method"])] = record  # a later run of a setting replaces the earlier
    lines = [
        "| setting | val AUC / acc. | map | pointing game | energy | Jaccard | deletion AUC (lower better) "
        "| insertion AUC |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (setting, method), r in seen.items():
        quality = f"{r['val_accuracy']:.3f} acc." if setting == "cluttered" else f"{r['val_auc']:.3f} AUC"
        lines.append(
            f"| {setting} | {quality} | {method} | {r['pointing_game']:.3f} | {r['energy']:.3f} | "
            f"{r['jaccard']:.3f} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} |"
        )
    return "\n".join(lines)


def goals(records: list[dict]) -> dict:
    """The issue's goals, checked on the best attention tap of each setting."""

    def best(setting: str, metric: str, prefix: str = "attention:") -> float | None:
        values = [
            r[metric] for r in records if r["setting"] == setting and r["method"].startswith(prefix) and metric in r
        ]
        return max(values) if values else None

    result = {}
    pointing = best("cluttered", "pointing_game")
    gradcam = next(
        (r["pointing_game"] for r in records if r["setting"] == "cluttered" and r["method"] == "gradcam"), None
    )
    if pointing is not None:
        result["cluttered_attention_pointing_game"] = pointing
        result["cluttered_gradcam_pointing_game"] = gradcam
        result["cluttered_best_cam_pointing_game"] = max(
            r["pointing_game"]
            for r in records
            if r["setting"] == "cluttered" and not r["method"].startswith("attention:")
        )
        result["pointing_game_0.90_met"] = pointing >= 0.90
        result["attention_above_gradcam"] = gradcam is not None and pointing > gradcam
    jaccard = best("lesions_supervised", "jaccard")
    if jaccard is not None:
        result["supervised_lesions_attention_jaccard"] = jaccard
        result["unsupervised_lesions_attention_jaccard"] = best("lesions", "jaccard")
        result["jaccard_0.7_met"] = jaccard >= 0.7
    few = best("lesions_supervised_10pct", "jaccard")
    if few is not None:
        result["ten_percent_masks_attention_jaccard"] = few
        result["jaccard_0.65_with_10pct_masks_met"] = few >= 0.65
    return result


if __name__ == "__main__":
    main()
