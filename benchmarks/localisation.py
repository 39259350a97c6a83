"""Does the attention point at what matters? Attention against every CAM on the same models.

    python -m benchmarks.localisation --out benchmarks/results/localisation-cpu.jsonl
    python -m benchmarks.localisation --quick            # a smoke run: tiny sets, 1 epoch
    python -m benchmarks.localisation --table benchmarks/results/localisation-cpu.jsonl   # README's table
    python -m benchmarks.localisation --goals benchmarks/results/localisation-cpu.jsonl   # the goals, from it

Trains the same small attention model (attn_vgg_tiny, grid attention on pool-3
and pool-4) on

- ``cluttered``: Fashion-MNIST items placed among clutter on a canvas, the item's
  box as the mask (real data from Debian's dataset-fashion-mnist);
- ``cluttered_consistency``: the same with attention consistency under its flips
  and crops (Guo et al. 2019; no masks);
- ``lesions``: generated lesions with their masks, without mask supervision;
- ``lesions_consistency``: no masks either, with attention consistency under the
  training augmentation (Guo et al. 2019; flips, quarter turns and rotation);
- ``lesions_self_focal`` and ``cluttered_self_focal``: no masks, the self-guided focal
  attention loss (each map its own detached target: ``supervision.kind: self_focal``);
- ``lesions_supervised``: the same with AttnMel-style supervision (Dice between
  each tap and the mask),
- ``lesions_supervised_10pct``: the same supervision with the masks of 10% of the
  training images only (``data.mask_fraction``; the rest train by the
  classification loss alone),
- ``lesions_anywhere`` and ``lesions_anywhere_consistency``: lesions anywhere in the frame among
  distractors (``placement: anywhere``: hairs, ruler marks, dark corners, moles), without masks, plain and
  with attention consistency: where a map of the centre no longer scores;
- ``cluttered_vit``: the cluttered set with a small vision transformer in place of the attention VGG
  (vit_tiny's width, 6 blocks, 8-pixel patches): its class-token attention, the CAMs on its tokens, and
  attention rollout and transformer attribution (``--methods default,attention_rollout,transformer_attribution``),

then scores every attention tap and every CAM and pixel method (``--methods``) on test images: pointing game,
energy, Jaccard (map >= 0.5), deletion and insertion AUC, beside two maps that know nothing of the image: a
Gaussian at the centre and uniform noise. ``--seeds N`` trains each setting N times (training seeds 0..N-1,
the same data) and the table shows each score's mean and standard deviation over them. Prints one JSON
object per (setting, seed, method), then a summary object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from attnscope.data.module import DataModule
from attnscope.engine.config import load_config
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.rundir import RunPaths, read_json
from attnscope.explain.explainer import ExplainOptions, explain
from attnscope.explain.scores import localisation_scores
from attnscope.names import CAM_METHODS, PIXEL_METHODS
from attnscope.training.train import train
from benchmarks.common import add_result_arguments, append_records, choose, print_table

CONSISTENCY_WEIGHT = 0.03
SELF_FOCAL_WEIGHT = 0.1


def settings_for(name: str, quick: bool, seed: int = 0) -> list[str]:
    """The run config of one setting, as dotted settings over the defaults; ``seed`` seeds the training (the
    weights, the batches, the augmentation), the data and its split stay the same."""
    shared = [
        "model.name=attn_vgg_tiny",
        "trainer.progress=false",
        "data.progress=false",
        "optim.name=adam",
        "optim.lr=0.001",
        "schedule.name=cosine",
        "schedule.warmup_epochs=1",
        f"trainer.seed={seed}",
    ]
    consistency = f"supervision.consistency={{pool3: {CONSISTENCY_WEIGHT}, pool4: {CONSISTENCY_WEIGHT}}}"
    self_focal = [
        "supervision.kind=self_focal",
        f"supervision.weights={{pool3: {SELF_FOCAL_WEIGHT}, pool4: {SELF_FOCAL_WEIGHT}}}",
    ]
    if name == "cluttered_vit":
        # a small vision transformer from scratch: vit_tiny's width and heads, 6 blocks, 8-pixel patches (an
        # 8 x 8 grid at 64 px), bf16 where native; AdamW with weight decay, as transformers are trained
        shared = [*shared, "model.name=vit_tiny_patch16_224", "model.options={depth: 6, patch_size: 8}"]
        shared += ["optim.name=adamw", "optim.lr=0.0005", "optim.weight_decay=0.05", "trainer.precision=auto"]
    if name.startswith("cluttered"):
        count = 600 if quick else 12000
        return (
            shared
            + ([consistency] if name == "cluttered_consistency" else [])
            + (self_focal if name == "cluttered_self_focal" else [])
            + [
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
        )
    count = 300 if quick else 4000
    placement = ", placement: anywhere" if name.startswith("lesions_anywhere") else ""
    lesion = shared + [
        "data.source=synthetic_lesions",
        f"data.source_options={{count: {count}, size: 80, seed: 0{placement}}}",
        "data.image_size=64",
        "data.batch_size=32",
        "model.options={normalize: sigmoid}",
        f"trainer.epochs={1 if quick else 15}",
    ]
    if name in ("lesions_consistency", "lesions_anywhere_consistency"):
        # Guo et al. 2019: the map of a moved image must equal the moved map; quarter turns added to the
        # default flips and rotation (a resized crop was tried too: it also blurs the lesion-size cue)
        lesion += [consistency, "data.augment={rotation: 10, hflip: true, vflip: true, rot90: true}"]
    if name == "lesions_self_focal":
        lesion += self_focal
    if name.startswith("lesions_supervised"):
        lesion += ["supervision.kind=dice", "supervision.weights={pool3: 0.1, pool4: 0.1}"]
    if name == "lesions_supervised_10pct":
        lesion += ["data.mask_fraction=0.1"]
    return lesion


SETTINGS = (
    "cluttered",
    "cluttered_consistency",
    "lesions",
    "lesions_consistency",
    "lesions_self_focal",
    "cluttered_self_focal",
    "lesions_supervised",
    "lesions_supervised_10pct",
    "cluttered_vit",
    "lesions_anywhere",
    "lesions_anywhere_consistency",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sets and one epoch: checks the script runs")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {SETTINGS}")
    parser.add_argument("--images", type=int, default=500, help="test images scored per setting (default 500)")
    parser.add_argument("--seeds", type=int, default=1, help="trainings per setting, seeds 0..N-1 (default 1)")
    parser.add_argument("--steps", type=int, default=8, help="steps of the deletion/insertion curves")
    parser.add_argument(
        "--workdir",
        help="keep the runs here (default: a temporary folder); a setting already trained there is only "
        "scored again, e.g. with other --methods",
    )
    parser.add_argument(
        "--methods", default="all", help="comma-separated map methods to score, or all / default (default: all)"
    )
    parser.add_argument("--road", action="store_true", help="also score ROAD (slow: eight imputed images a map)")
    parser.add_argument(
        "--baselines-only",
        metavar="JSONL",
        help="score only the two model-free maps of each setting's test split (no training), next to the "
        "classification figures of its latest records in this results file",
    )
    add_result_arguments(parser)
    parser.add_argument("--goals", metavar="JSONL", help="print the goals checked on a results file's latest rows")
    args = parser.parse_args()
    if print_table(args.table, render_table):
        return
    if args.goals:
        records = [json.loads(line) for line in Path(args.goals).read_text().splitlines() if line.strip()]
        print(json.dumps(goals(list(latest(records).values())), indent=1))
        return
    chosen = choose(parser, args.settings, SETTINGS, "setting")
    if args.baselines_only:
        records = baselines_only(
            chosen, Path(args.baselines_only), min(args.images, 40) if args.quick else args.images, args.quick
        )
        append_records(args.out, records)
        return
    records = []
    with tempfile.TemporaryDirectory(prefix="attnscope-localisation-") as scratch:
        root = Path(args.workdir or scratch)
        for name, seed in ((name, seed) for name in chosen for seed in range(args.seeds)):
            run_dir = root / (name if seed == 0 else f"{name}-seed{seed}")
            seconds = train_setting(name, run_dir, args.quick, seed)
            best = read_json(RunPaths(run_dir).best)
            count = min(args.images, 40) if args.quick else args.images
            options = ExplainOptions(
                methods=tuple(args.methods.split(",")),
                count=count,
                steps=args.steps,
                road=args.road,
                overlays=False,
            )
            run = Run.open(run_dir, progress=False)
            result = explain(run, options)
            test_split = run.loader(DataSelection(split="test"))
            baselines = baseline_maps(test_split, count) if with_attention(args.methods) else []
            for method, scores in [*result.summary.items(), *baselines]:
                record = {
                    "setting": name,
                    "seed": seed,
                    "method": method,
                    "train_s": seconds,
                    "val_auc": best["metrics"].get("val/auc"),
                    "val_accuracy": best["metrics"].get("val/accuracy"),
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()},
                }
                records.append(record)
                print(json.dumps(record), flush=True)
    summary = {"summary": "localisation", "quick": args.quick, "goals": goals(records)}
    print(json.dumps(summary), flush=True)
    append_records(args.out, [*records, summary])


CENTRE_PRIOR = "centre prior (no model)"
RANDOM_MAP = "random map (no model)"


def centre_map(side: int, count: int) -> torch.Tensor:
    """A Gaussian at the centre of the frame (sigma a sixth of the side), the same for every image."""
    position = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
    gaussian = torch.exp(-(position[:, None] ** 2 + position[None, :] ** 2) / (2 * (side / 6) ** 2))
    return gaussian.expand(count, side, side)


def random_maps(side: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise, a new map for every image (seeded): where a map that knows nothing lands on average."""
    return torch.rand(count, side, side, generator=generator)


def baseline_maps(batches: Iterable[dict], count: int) -> list[tuple[str, dict[str, float]]]:
    """Localisation scores of the two maps that ignore the image, on the same test images as the methods: a
    map must beat both to show that it finds what matters (generated lesions sit near the centre)."""
    generator = torch.Generator().manual_seed(0)
    sums = {name: {"pointing_game": 0.0, "energy": 0.0, "jaccard": 0.0} for name in (CENTRE_PRIOR, RANDOM_MAP)}
    done = scored = 0
    for batch in batches:
        masks = batch["mask"][: count - done].float()
        side = masks.shape[-1]
        masks = masks.reshape(len(masks), side, side)
        maps = {CENTRE_PRIOR: centre_map(side, len(masks)), RANDOM_MAP: random_maps(side, len(masks), generator)}
        for name, baseline in maps.items():
            scores = localisation_scores(baseline, masks)
            for metric in sums[name]:
                sums[name][metric] += float(scores[metric].nansum())
        scored += int(scores["pointing_game"].isfinite().sum())  # an image without a mask has no score
        done += len(masks)
        if done >= count:
            break
    return [
        (name, {"images": done, **{metric: round(total / max(scored, 1), 4) for metric, total in totals.items()}})
        for name, totals in sums.items()
    ]


def baselines_only(settings: Sequence[str], results: Path, count: int, quick: bool = False) -> list[dict]:
    """The model-free maps of each setting's test split, the data and split built as its training built them
    (no model is needed); the classification figures come from the setting's latest records in ``results``."""
    previous = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    records = []
    for name in settings:
        trained = [r for (setting, _, seed), r in latest(previous).items() if setting == name and seed == 0]
        if not trained:
            raise SystemExit(f"{results} holds no record of {name}: train it first")
        config = load_config(None, settings_for(name, quick))
        test_split = DataModule(config.data).setup().test_loader()
        for method, scores in baseline_maps(test_split, count):
            quality = {key: trained[0][key] for key in ("val_auc", "val_accuracy")}
            record = {"setting": name, "seed": 0, "method": method, "train_s": None, **quality, **scores}
            records.append(record)
            print(json.dumps(record), flush=True)
    return records


def with_attention(methods: str) -> bool:
    """Whether ``--methods`` scores the attention maps: the centre prior is scored beside them only, so a
    later run of other methods on fewer images does not replace it."""
    return bool({"all", "default", "attention"} & set(methods.split(",")))


def train_setting(name: str, run_dir: Path, quick: bool, seed: int = 0) -> float | None:
    """Train one setting into ``run_dir`` and return the seconds it took; None when it was trained before."""
    if RunPaths(run_dir).best.is_file():
        return None
    started = time.perf_counter()
    train(load_config(None, settings_for(name, quick, seed) + [f"run_dir={run_dir}"]))
    return round(time.perf_counter() - started, 1)


def latest(records: list[dict]) -> dict[tuple[str, str, int], dict]:
    """The last record of each (setting, method, seed): a later run replaces an earlier one."""
    seen: dict[tuple[str, str, int], dict] = {}
    for record in records:
        if "setting" in record:
            seen[(record["setting"], record["method"], record.get("seed", 0))] = record
    return seen


def spread(values: list[float]) -> str:
    """One value as it is; several as mean ± sample standard deviation."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.3f} ± {sd:.3f}"


def render_table(records: list[dict]) -> str:
    """One row per (setting, method) of the last run of each seed in ``records``: classification, then map
    scores, as mean ± sd where several seeds were trained."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for (setting, method, _), record in latest(records).items():
        grouped.setdefault((setting, method), []).append(record)
    lines = [
        "| setting | seeds | val AUC / acc. | map | images | pointing game | energy | Jaccard "
        "| deletion AUC (lower better) | insertion AUC |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = ("pointing_game", "energy", "jaccard", "deletion_auc", "insertion_auc")
    for (setting, method), rows in grouped.items():
        key = "val_accuracy" if setting.startswith("cluttered") else "val_auc"
        quality = f"{spread([r[key] for r in rows])} {'acc.' if key == 'val_accuracy' else 'AUC'}"
        cells = " | ".join(spread([r[name] for r in rows]) if name in rows[0] else "-" for name in names)
        lines.append(f"| {setting} | {len(rows)} | {quality} | {method} | {rows[0]['images']} | {cells} |")
    return "\n".join(lines)


def cluttered_goals(records: list[dict], setting: str, pointing: float | None) -> dict:
    """Attention's pointing game on a cluttered setting against 0.90, Grad-CAM and every layer CAM (the pixel
    methods' best is reported beside them: they map pixels, not a layer, and find a small item's edges)."""
    if pointing is None:
        return {}
    scored = {r["method"]: r["pointing_game"] for r in records if r["setting"] == setting}
    cams = {method: value for method, value in scored.items() if method in CAM_METHODS}
    pixels = {method: value for method, value in scored.items() if method in PIXEL_METHODS}
    best_cam = max(cams.values(), default=float("nan"))
    return {
        f"{setting}_attention_pointing_game": pointing,
        f"{setting}_gradcam_pointing_game": cams.get("gradcam"),
        f"{setting}_best_cam_pointing_game": best_cam,
        f"{setting}_best_pixel_method_pointing_game": max(pixels.values(), default=None),
        f"{setting}_pointing_game_0.90_met": pointing >= 0.90,
        f"{setting}_attention_above_gradcam": "gradcam" in cams and pointing > cams["gradcam"],
        f"{setting}_attention_at_or_above_every_cam": pointing >= best_cam,
    }


def goals(records: list[dict]) -> dict:
    """The issue's goals, checked on the best attention tap of each setting."""

    def best(setting: str, metric: str, prefix: str = "attention:") -> float | None:
        values = [
            r[metric] for r in records if r["setting"] == setting and r["method"].startswith(prefix) and metric in r
        ]
        return max(values) if values else None

    result: dict = {}
    for setting in ("cluttered", "cluttered_consistency", "cluttered_self_focal"):
        result.update(cluttered_goals(records, setting, best(setting, "pointing_game")))
    jaccard = best("lesions_supervised", "jaccard")
    if jaccard is not None:
        result["supervised_lesions_attention_jaccard"] = jaccard
        result["unsupervised_lesions_attention_jaccard"] = best("lesions", "jaccard")
        result["jaccard_0.7_met"] = jaccard >= 0.7
    auc = {r["setting"]: r["val_auc"] for r in records}
    for setting, key in (("lesions_consistency", "no_masks"), ("lesions_self_focal", "self_focal")):
        pointing = best(setting, "pointing_game")
        if pointing is None:
            continue
        result[f"{key}_attention_pointing_game"] = pointing
        result[f"{key}_pointing_game_0.80_met"] = pointing >= 0.80
        if "lesions" in auc:
            result[f"{key}_auc_change"] = auc[setting] - auc["lesions"]
            result[f"{key}_auc_within_0.01"] = auc[setting] - auc["lesions"] >= -0.01
    few = best("lesions_supervised_10pct", "jaccard")
    if few is not None:
        result["ten_percent_masks_attention_jaccard"] = few
        result["jaccard_0.65_with_10pct_masks_met"] = few >= 0.65
    return result


if __name__ == "__main__":
    main()
