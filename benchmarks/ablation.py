"""What does each attention type buy? The same backbone with none, SE, CBAM, grid and local attention.

    python -m benchmarks.ablation --out benchmarks/results/ablation-cpu.jsonl
    python -m benchmarks.ablation --quick                    # a smoke run: tiny sets, 1 epoch
    python -m benchmarks.ablation --table benchmarks/results/ablation-cpu.jsonl   # README's tables

Equal budget: every attention type trains with the same recipe, data, number of
epochs and seeds; only the model changes. The backbone is ``resnet_tiny`` (one
basic block per stage):

- ``fashion_mnist``: the shipped recipe (3x3 stem, width 32) for ``--epochs``
  epochs on the 54,000 training images, scored on the official 10,000 test
  images; accuracy, parameters and seconds per epoch, for each of ``--seeds``.
- ``speed``: training images per second of each Fashion-MNIST model (batch 128,
  bfloat16 autocast, channels_last, as the recipe), timed in interleaved rounds
  so that a busy machine slows every type alike; the per-epoch seconds of the
  runs above also count validation and whatever else shared the machine.
- ``cluttered`` and ``lesions``: the localisation benchmark's data and recipe
  (``benchmarks/localisation.py``) at 64 px with the ImageNet stem at width 32;
  test accuracy or AUC, and the pointing game, energy and Jaccard of Grad-CAM
  and of every attention map the model has, on 500 test images.

Local self-attention uses 3x3 neighbourhoods (the receptive field of the
convolutions it replaces): 7x7 ones train 7x slower still on this CPU. Prints one
JSON object per (setting, attention, seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from attnscope.engine.config import load_config
from attnscope.engine.inference import evaluate
from attnscope.engine.run import Run
from attnscope.engine.rundir import RunPaths, read_json, read_metrics_csv
from attnscope.explain.explainer import ExplainOptions, explain
from attnscope.training.train import train
from benchmarks.common import (
    add_result_arguments,
    append_records,
    choose,
    print_table,
    provenance,
    run_facts,
    short_cpu,
)
from benchmarks.localisation import settings_for

ATTENTION: dict[str, tuple[str, dict]] = {
    "none": ("resnet_tiny", {}),
    "se": ("resnet_tiny", {"attn": "se"}),
    "cbam": ("resnet_tiny", {"attn": "cbam"}),
    "grid": ("attn_resnet_tiny", {}),
    "local": ("resnet_tiny", {"attn": "local", "local_kernel": 3}),
}
SETTINGS = ("fashion_mnist", "cluttered", "lesions", "speed")
MAP_SCORES = ("pointing_game", "energy", "jaccard")


def run_settings(
    setting: str, attention: str, seed: int, epochs: int, quick: bool, directory: str | None = None
) -> tuple[str | None, list[str]]:
    """(config name, dotted settings) of one training run."""
    name, options = ATTENTION[attention]
    if setting == "fashion_mnist":
        options = {"stem": "small", "width": 8 if quick else 32, **options}
        shared = ["data.progress=false"]
        if directory:
            shared.append(f"data.source_options={json.dumps({'directory': str(directory), 'split': 'all'})}")
        return "fashion_mnist", shared + [
            f"model.name={name}",
            f"model.options={json.dumps(options)}",
            f"trainer.epochs={epochs}",
            f"trainer.seed={seed}",
            "trainer.progress=false",
        ]
    options = {"stem": "imagenet", "width": 32, **options}
    return None, settings_for(setting, quick) + [
        f"model.name={name}",
        f"model.options={json.dumps(options)}",
        f"trainer.epochs={epochs}",
        f"trainer.seed={seed}",
    ]


def one_run(
    root: Path, setting: str, attention: str, seed: int, epochs: int, quick: bool, images: int, directory: str | None
) -> dict:
    """Train one model, score it on its test split, and return its record."""
    run_dir = root / f"{setting}-{attention}-{seed}"
    config_name, settings = run_settings(setting, attention, seed, epochs, quick, directory)
    config = load_config(config_name, [*settings, f"run_dir={run_dir}"])
    started = time.perf_counter()
    train(config)
    wall = time.perf_counter() - started
    paths = RunPaths(run_dir)
    history = read_metrics_csv(paths.metrics)
    epoch_seconds = [row["seconds"] for row in history]
    train_rows = read_json(paths.data)["counts"]["train"]["rows"]
    run = Run.open(run_dir, progress=False)
    metrics = evaluate(run).metrics
    record = {
        "benchmark": "ablation",
        "setting": setting,
        "attention": attention,
        "model": config.model.name,
        "model_options": config.model.options,
        "seed": seed,
        "epochs": len(history),
        "params": sum(p.numel() for p in run.model().parameters()),
        "s_per_epoch": round(statistics.median(epoch_seconds), 1),
        "train_img_per_s": round(train_rows / statistics.median(epoch_seconds), 1),
        "wall_s": round(wall, 1),
        "test_accuracy": round(metrics["accuracy"], 4),
        "test_images": metrics["rows"],
    }
    if metrics.get("auc") is not None:
        record["test_auc"] = round(metrics["auc"], 4)
    if setting != "fashion_mnist":
        methods = ("attention", "gradcam") if attention not in ("none", "se") else ("gradcam",)
        result = explain(run, ExplainOptions(methods=methods, count=images, steps=2, overlays=False))
        record["maps"] = {
            method: {score: round(scores[score], 4) for score in MAP_SCORES}
            for method, scores in result.summary.items()
        }
    return record


def step_speed(attentions: list[str], rounds: int, steps: int, quick: bool) -> list[dict]:
    """Median training images per second of each type's Fashion-MNIST model, timed round-robin."""
    from torch.nn import functional as F

    from attnscope.models import create_model

    batch = 16 if quick else 128
    torch.manual_seed(0)
    images = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    steppers = {}
    for attention in attentions:
        name, options = ATTENTION[attention]
        model = create_model(name, num_classes=10, in_chans=1, stem="small", width=8 if quick else 32, **options)
        model = model.to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, optimizer=optimizer) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()  # warm-up
        steppers[attention] = (step, sum(p.numel() for p in model.parameters()))
    times: dict[str, list[float]] = {attention: [] for attention in attentions}
    for _ in range(rounds):
        for attention, (step, _) in steppers.items():
            started = time.perf_counter()
            for _ in range(steps):
                step()
            times[attention].append((time.perf_counter() - started) / steps)
    return [
        {
            "benchmark": "ablation",
            "setting": "speed",
            "attention": attention,
            "params": steppers[attention][1],
            "batch": batch,
            "rounds": rounds,
            "steps": steps,
            "train_img_per_s": round(batch / statistics.median(times[attention]), 1),
        }
        for attention in attentions
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {SETTINGS}")
    parser.add_argument(
        "--attention", default=",".join(ATTENTION), help=f"comma-separated subset of {tuple(ATTENTION)}"
    )
    parser.add_argument(
        "--seeds", default="0,1,2", help="Fashion-MNIST seeds (default 0,1,2); other settings use the first"
    )
    parser.add_argument("--local-seeds", help="seeds for local attention, which trains ~10x slower (default: --seeds)")
    parser.add_argument("--epochs", type=int, default=3, help="Fashion-MNIST epochs per run (default 3)")
    parser.add_argument("--map-epochs", type=int, default=12, help="cluttered/lesions epochs per run (default 12)")
    parser.add_argument("--rounds", type=int, default=5, help="speed: interleaved timing rounds (default 5)")
    parser.add_argument("--images", type=int, default=500, help="test images whose maps are scored (default 500)")
    parser.add_argument("--quick", action="store_true", help="tiny sets, one epoch, one seed: checks the script runs")
    parser.add_argument("--fashion-mnist", metavar="DIR", help="your copy of the IDX files (default: Debian's)")
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    add_result_arguments(parser)
    args = parser.parse_args()
    if print_table(args.table, render_tables):
        return
    settings = choose(parser, args.settings, SETTINGS, "setting")
    attentions = choose(parser, args.attention, ATTENTION, "attention type")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        local_seeds = [int(s) for s in args.local_seeds.split(",")] if args.local_seeds else seeds
    except ValueError:
        parser.error(f"--seeds/--local-seeds take comma-separated integers, got {args.seeds!r} / {args.local_seeds!r}")
    if args.quick:
        seeds, local_seeds = seeds[:1], local_seeds[:1]
    machine = run_facts()
    if "speed" in settings:
        for record in step_speed(attentions, 2 if args.quick else args.rounds, 1 if args.quick else 3, args.quick):
            record.update(machine)
            print(json.dumps(record), flush=True)
            append_records(args.out, [record])
    with tempfile.TemporaryDirectory(prefix="attnscope-ablation-") as scratch:
        root = Path(args.workdir or scratch)
        for setting in (s for s in settings if s != "speed"):
            for attention in attentions:
                chosen = local_seeds if attention == "local" else seeds
                for seed in chosen if setting == "fashion_mnist" else chosen[:1]:
                    epochs = 1 if args.quick else args.epochs if setting == "fashion_mnist" else args.map_epochs
                    record = {
                        **one_run(
                            root,
                            setting,
                            attention,
                            seed,
                            epochs,
                            args.quick,
                            min(args.images, 40) if args.quick else args.images,
                            args.fashion_mnist,
                        ),
                        **machine,
                    }
                    print(json.dumps(record), flush=True)
                    append_records(args.out, [record])


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _scores(scores: dict) -> str:
    return " / ".join(f"{scores[name]:.2f}" for name in MAP_SCORES)


def render_tables(records: list[dict]) -> str:
    """Fashion-MNIST: mean ± sd over seeds; cluttered and lesions: classification and map scores."""
    fashion = [r for r in records if r["setting"] == "fashion_mnist"]
    speed = {r["attention"]: r for r in records if r["setting"] == "speed"}
    lines = []
    if fashion or speed:
        lines += [
            "| attention | parameters | epochs | seeds | test accuracy (mean ± sd) | s/epoch in the runs "
            "| the runs' CPU | training images/s (interleaved) | speed vs none |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for attention in dict.fromkeys([*(r["attention"] for r in fashion), *speed]):
            rows = [r for r in fashion if r["attention"] == attention]
            clean = speed.get(attention)
            rate = f"{clean['train_img_per_s']:,.0f}" if clean else "-"
            ratio = (
                f"{clean['train_img_per_s'] / speed['none']['train_img_per_s']:.2f}x"
                if clean and "none" in speed
                else "-"
            )
            trained = (
                f"{rows[0]['epochs']} | {len(rows)} | {_spread([r['test_accuracy'] for r in rows])} | "
                f"{statistics.median(r['s_per_epoch'] for r in rows):.0f} | "
                f"{', '.join(dict.fromkeys(short_cpu(r) for r in rows))}"
                if rows
                else "- | 0 | not trained | - | -"
            )
            params = (rows[0] if rows else clean)["params"]
            lines.append(f"| {attention} | {params:,} | {trained} | {rate} | {ratio} |")
    maps = [r for r in records if r["setting"] in ("cluttered", "lesions")]
    if maps:
        lines += [
            "",
            "| setting | attention | test acc. / AUC | s/epoch | Grad-CAM pointing / energy / Jaccard "
            "| best attention map (of n) | its pointing / energy / Jaccard |",
            "|---|---|---:|---:|---:|---|---:|",
        ]
        for r in maps:
            quality = f"{r['test_auc']:.3f} AUC" if r["setting"] == "lesions" else f"{r['test_accuracy']:.3f} acc."
            attention = {m: s for m, s in r["maps"].items() if m.startswith("attention:")}
            best = max(attention, key=lambda m: (attention[m]["pointing_game"], attention[m]["energy"]), default=None)
            shown = (
                f"{best.removeprefix('attention:')} ({len(attention)}) | {_scores(attention[best])}"
                if best
                else "no spatial map | -"
            )
            lines.append(
                f"| {r['setting']} | {r['attention']} | {quality} | {r['s_per_epoch']:.0f} | "
                f"{_scores(r['maps']['gradcam'])} | {shown} |"
            )
    return "\n".join([*lines, "", provenance(records)]).strip()


if __name__ == "__main__":
    main()
