"""One self-contained HTML page about a run: what it is, how well it does, where it looks.

``write_report(run_dir)`` evaluates the run on its test split (metrics, ROC, PR,
confusion), draws its training curves, scores attention and CAMs on test images
(localisation when the images have masks, faithfulness always), and builds a
gallery of test images grouped by outcome, the most confident errors first,
each with its probability, every attention tap and Grad-CAM. Every picture is
embedded as a data URI: the file opens anywhere, with no network and no folder
beside it.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path

import numpy as np
import torch

from attnscope.data.loader import BatchLoader
from attnscope.engine.inference import LoadedRun, evaluate, evaluation_rows, load_run, predict_loader
from attnscope.engine.plots import save_figure
from attnscope.engine.rundir import RunPaths, read_json, read_metrics_csv
from attnscope.explain.explainer import SCORE_NAMES, explain_batch, explain_run
from attnscope.explain.overlay import write_attention_grid
from attnscope.fileio import atomic_write

log = logging.getLogger(__name__)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { border: 1px solid #ddd; padding: 0.25rem 0.6rem; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots img { max-width: 32%; margin-right: 1%; } figure { margin: 0.6rem 0; } figcaption { font-size: 0.9rem; }
.gallery figure { display: inline-block; vertical-align: top; width: 48%; margin-right: 1%; }
.gallery img { max-width: 100%; } .muted { color: #777; }
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_number(v)}</td>' if i >= numeric_from else f"<td>{html.escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def training_curves(paths: RunPaths, out: Path) -> Path | None:
    """Loss and AUC per epoch, train and validation."""
    import matplotlib.pyplot as plt

    if not paths.metrics.exists():
        return None
    history = read_metrics_csv(paths.metrics)
    epochs = [row["epoch"] + 1 for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for axis, metric in zip(axes, ("loss", "auc"), strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            values = [row.get(f"{split}/{metric}", math.nan) for row in history]
            if not all(math.isnan(v) for v in values):
                axis.plot(epochs, values, style, marker="o", markersize=3, label=split)
        axis.set(xlabel="epoch", title=metric.upper() if metric == "auc" else metric)
        axis.legend(fontsize="small")
    return save_figure(figure, out)


def outcome(kind: str, truth, predicted) -> str:
    """TP/FP/TN/FN for binary problems, correct/error otherwise."""
    if kind == "binary":
        return {(1, 1): "true positive", (0, 1): "false positive", (0, 0): "true negative", (1, 0): "false negative"}[
            (int(truth), int(predicted))
        ]
    return "correct" if np.array_equal(np.asarray(truth), np.asarray(predicted)) else "error"


def probability_text(run: LoadedRun, probs: torch.Tensor) -> str:
    """``p(malignant) = 0.283`` (binary: the positive class), the top class, or every label."""
    if run.kind == "binary":
        return f"p({run.classes[1]}) = {float(probs):.3f}"
    if run.kind == "multiclass":
        top = int(probs.argmax())
        return f"p({run.classes[top]}) = {float(probs[top]):.3f}"
    return ", ".join(f"p({name}) = {float(p):.3f}" for name, p in zip(run.classes, probs.tolist(), strict=True))


def gallery_order(
    run: LoadedRun, probs: torch.Tensor, labels: torch.Tensor, per_group: int
) -> list[tuple[int, str, float]]:
    """(position, group, confidence of the prediction) for the gallery: errors first, the most confident first."""
    if run.kind == "binary":
        threshold = 0.5 if run.threshold is None else float(run.threshold)
        predicted = (probs >= threshold).long()
        confidence = torch.where(predicted == 1, probs, 1 - probs)
    elif run.kind == "multiclass":
        predicted = probs.argmax(1)
        confidence = probs.max(1).values
    else:
        thresholds = torch.tensor(run.threshold if isinstance(run.threshold, list) else [0.5] * len(run.classes))
        predicted = (probs >= thresholds).long()
        confidence = (probs - thresholds).abs().mean(1)
    groups: dict[str, list[tuple[int, float]]] = {}
    for position in range(len(labels)):
        group = outcome(run.kind, labels[position].tolist(), predicted[position].tolist())
        groups.setdefault(group, []).append((position, float(confidence[position])))
    order = ["false positive", "false negative", "error", "true positive", "true negative", "correct"]
    chosen = []
    for group in order:
        members = sorted(groups.get(group, []), key=lambda item: -item[1])[:per_group]
        chosen.extend((position, group, value) for position, value in members)
    return chosen


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    per_group: int = 4,
    score_images: int = 32,
    steps: int = 8,
    weights: str = "best",
    progress: bool = True,
    evaluation: dict | None = None,
    run: LoadedRun | None = None,
    loader: BatchLoader | None = None,
) -> Path:
    """``RUN/report.html`` (or ``out``): config, metrics, plots, curves, scores, gallery.

    ``evaluation``: the result of :func:`attnscope.engine.inference.evaluate` on the
    test split when it has just been computed (``attnscope evaluate``); else it is
    computed. ``run`` and ``loader`` (the test split's) spare reading them again:
    building the split once more costs seconds (10 s for the demo's generated set).
    """
    paths = RunPaths(Path(run_dir)).require()
    out = Path(out) if out is not None else paths.root / "report.html"
    work = paths.root / "report_files"
    run = run or load_run(paths.root, weights)
    loader = loader or evaluation_rows(run, progress=progress)
    if evaluation is None:
        evaluation = evaluate(
            paths.root, paths.root / "evaluation", weights=weights, progress=progress, run=run, loader=loader
        )
    curves = training_curves(paths, work / "curves.png")
    scores = explain_run(
        paths.root,
        work / "explain",
        methods=["all"],
        count=score_images,
        weights=weights,
        steps=steps,
        progress=progress,
        run=run,
        loader=loader,
    )
    probs, labels, rows = predict_loader(run, loader, progress=False)
    manifest = loader.decoded.manifest
    chosen = gallery_order(run, probs, labels, per_group)
    gallery_html = []
    if chosen:
        wanted = np.array([int(rows[position]) for position, _, _ in chosen])
        batch = next(iter(BatchLoader(loader.decoded, wanted, len(wanted))))  # rows come back in cache order
        explanation = explain_batch(run, batch["image"], ["attention", "gradcam"])
        where = {row: index for index, row in enumerate(batch["row"].tolist())}
        current = None
        for number, (position, group, confidence) in enumerate(chosen):
            row = int(rows[position])
            index = where[row]
            figure = write_attention_grid(
                batch["image"][index : index + 1],
                {k: v[index : index + 1] for k, v in explanation.maps.items()},
                [manifest.ids[row]],
                work / "gallery" / f"{number:03d}.png",
                normalise_maps=False,
            )
            if group != current:
                gallery_html.append(f"<h3>{html.escape(group)}</h3>")
                current = group
            caption = (
                f"{html.escape(manifest.ids[row])}: true {html.escape(manifest.label_text(row))}; "
                f"{html.escape(probability_text(run, probs[position]))}"
            )
            gallery_html.append(
                f'<figure><img src="{data_uri(figure)}" alt="{html.escape(manifest.ids[row])}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
    page = _page(run, paths, evaluation, curves, scores, gallery_html)
    atomic_write(out, page)
    return out


def _page(
    run: LoadedRun, paths: RunPaths, evaluation: dict, curves: Path | None, scores: dict, gallery_html: list[str]
) -> str:
    config = run.config
    best = read_json(paths.best) if paths.best.exists() else {}
    summary = read_json(paths.data)
    metrics = evaluation["metrics"]
    metric_names = (
        "auc",
        "ap",
        "accuracy",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "sensitivity_youden",
        "specificity_youden",
        "threshold",
        "rows",
    )
    metric_rows = [
        [name, metrics[name]] for name in metric_names if not isinstance(metrics.get(name), (list, type(None)))
    ]
    for key in ("auc_per_class", "ap_per_class"):
        for name, value in zip(run.classes, metrics.get(key) or [], strict=False):
            metric_rows.append([f"{key[: -len('_per_class')]} ({name})", value])
    config_rows = [
        ["model", config.model.name],
        ["data", f"{config.data.source} {config.data.source_options}"],
        ["classes", ", ".join(run.classes)],
        ["image size", config.data.image_size],
        [
            "images (train / val / test)",
            " / ".join(str(summary["counts"][s]["rows"]) for s in ("train", "val", "test")),
        ],
        ["loss", f"{config.loss.name}"],
        ["optimiser", f"{config.optim.name}, lr {config.optim.lr}"],
        ["epochs", config.trainer.epochs],
        ["best epoch", f"{best.get('epoch', -1) + 1} ({best.get('monitor')} {_number(best.get('value'))})"],
    ]
    score_header = ["method", *[n for n in SCORE_NAMES if any(n in e for e in scores["summary"].values())]]
    score_rows = [[method, *[entry.get(n) for n in score_header[1:]]] for method, entry in scores["summary"].items()]
    plots = "".join(
        f'<img src="{data_uri(Path(p))}" alt="{name}" id="plot-{name}">' for name, p in evaluation["plots"].items()
    )
    where = "with masks: localisation and faithfulness" if scores["has_masks"] else "without masks: faithfulness only"
    sections = [
        f'<h1>attnscope report: {html.escape(paths.root.name)}</h1><p class="muted">{html.escape(str(paths.root))}</p>',
        f'<section id="config"><h2>Run</h2>{_table(["setting", "value"], config_rows, numeric_from=2)}</section>',
        f'<section id="metrics"><h2>Test metrics</h2>'
        f"<p>{html.escape(evaluation['data'])}, thresholds chosen on validation.</p>"
        f"{_table(['metric', 'value'], metric_rows)}</section>",
        f'<section id="plots" class="plots"><h2>ROC, precision-recall, confusion</h2>{plots}</section>',
    ]
    if curves is not None:
        sections.append(
            f'<section id="curves"><h2>Training curves</h2>'
            f'<img src="{data_uri(curves)}" alt="training curves"></section>'
        )
    sections.append(
        f'<section id="scores"><h2>Where the model looks: scores</h2>'
        f"<p>{scores['images']} test images, {where}. Pointing game, energy and Jaccard (map &ge; 0.5): "
        f"higher is better; deletion AUC: lower is better; insertion AUC: higher is better.</p>"
        f"{_table(score_header, score_rows)}</section>"
    )
    sections.append(
        '<section id="gallery" class="gallery"><h2>Gallery</h2>'
        "<p>Each row: the input, every attention tap and Grad-CAM of the predicted class.</p>"
        + "".join(gallery_html)
        + "</section>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>attnscope report: {html.escape(paths.root.name)}</title><style>{STYLE}</style></head><body>"
        + "".join(sections)
        + "</body></html>\n"
    )
