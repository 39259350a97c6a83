"""One self-contained HTML page about a run: what it is, how well it does, where it looks.

``write_report(run)`` evaluates the run on its test split (metrics, ROC, PR,
confusion), draws its training curves, scores attention and CAMs on test images
(localisation when the images have masks, faithfulness always), and builds a
gallery of test images grouped by outcome, the most confident errors first,
each with its probability, every attention tap and Grad-CAM. A multi-label run
(chest X-rays) is also shown finding by finding (:mod:`attnscope.explain.findings`):
each finding's metrics at its validation threshold, the localisation of its maps,
and its own gallery with the maps of that finding. Every picture is
embedded as a data URI: the file opens anywhere, with no network and no folder
beside it.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from attnscope.data.loader import BatchLoader
from attnscope.engine.inference import EvaluateOptions, Evaluation, evaluate, predict_loader
from attnscope.engine.plots import save_figure
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.rundir import RunPaths, read_metrics_csv
from attnscope.explain.explainer import (
    SCORE_NAMES,
    ExplainOptions,
    Explanation,
    explain,
    explain_batch,
    resolve_methods,
)
from attnscope.explain.findings import (
    FINDING_METRIC_HEADER,
    GalleryPick,
    finding_gallery_order,
    finding_localisation,
    finding_metric_rows,
)
from attnscope.explain.overlay import write_attention_grid
from attnscope.fileio import atomic_write, sweep_temporaries
from attnscope.htmlpage import document, png_file_uri
from attnscope.outputs import PAGE, check_output_file

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
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))  # no user text: no literal_text() needed
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
    truth, predicted = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    known = ~np.isnan(truth)  # a label left out (uncertain, ignored) is judged on the others
    return "correct" if np.array_equal(truth[known], predicted[known]) else "error"


def probability_text(run: Run, probs: torch.Tensor) -> str:
    """``p(malignant) = 0.28`` (binary: the positive class), the top class, or every label: two decimals, as a
    calibrated probability known to about a hundredth is read."""
    if run.kind == "binary":
        return f"p({run.classes[1]}) = {float(probs):.2f}"
    if run.kind == "multiclass":
        top = int(probs.argmax())
        return f"p({run.classes[top]}) = {float(probs[top]):.2f}"
    return ", ".join(f"p({name}) = {float(p):.2f}" for name, p in zip(run.classes, probs.tolist(), strict=True))


def gallery_order(run: Run, probs: torch.Tensor, labels: torch.Tensor, per_group: int) -> list[tuple[int, str, float]]:
    """(position, group, confidence of the prediction) for the gallery: errors first, the most confident first."""
    if run.kind == "binary":
        predicted = (probs >= run.binary_threshold).long()
        confidence = torch.where(predicted == 1, probs, 1 - probs)
    elif run.kind == "multiclass":
        predicted = probs.argmax(1)
        confidence = probs.max(1).values
    else:
        thresholds = torch.tensor(run.label_thresholds)
        predicted = (probs >= thresholds).long()
        confidence = (probs - thresholds).abs().mean(1)
    groups: dict[str, list[tuple[int, float]]] = {}
    for position in range(len(labels)):
        group = outcome(run.kind, labels[position].tolist(), predicted[position].tolist())
        groups.setdefault(group, []).append((position, float(confidence[position])))
    order = ["false positive", "false negative", "error", "true positive", "true negative", "correct"]
    chosen: list[tuple[int, str, float]] = []
    for group in order:
        members = sorted(groups.get(group, []), key=lambda item: -item[1])[:per_group]
        chosen.extend((position, group, value) for position, value in members)
    return chosen


@dataclass(frozen=True)
class ReportOptions:
    """Where the page goes (default ``RUN/report.html``), how many gallery images per outcome group,
    how many test images are scored, the steps of the deletion/insertion curves, and whether
    unreadable test images are left out (``skip_bad``) instead of stopping, and the ``methods`` scored
    (default: attention and the four one-pass CAMs; ``all`` or any of explain's)."""

    out: str | Path | None = None
    per_group: int = 4
    score_images: int = 32
    steps: int = 8
    skip_bad: bool = False
    methods: Sequence[str] = ("default",)
    force: bool = False  # replace a regular file at ``out`` that attnscope did not write
    sanity: int = 4  # test images the sanity checks run on (0: none): a method that fails is flagged


@dataclass
class Report:
    """The page written, with the evaluation and the explanation scores it shows."""

    path: Path
    evaluation: Evaluation
    explanation: Explanation


def write_report(run: Run, options: ReportOptions | None = None, evaluation: Evaluation | None = None) -> Report:
    """Write one self-contained HTML page about the run: config, test metrics, plots, training curves, map
    scores and sanity checks, a gallery.

    Args:
        run: the opened run.
        options: where to write (default ``RUN/report.html``), images per gallery group, images scored.
        evaluation: the run's test-split evaluation when it has just been computed; else it is computed
            here. The test split is read once for everything (the run caches its loader).

    Returns:
        The page's path and what it shows.
    """
    options = options or ReportOptions()
    out = check_output_file(options.out if options.out is not None else run.root / "report.html", PAGE, options.force)
    sweep_temporaries(out.parent)
    work = run.root / "report_files"
    test = DataSelection(split="test", skip_bad=options.skip_bad)
    evaluation = evaluation or evaluate(run, EvaluateOptions(**asdict(test)))
    curves = training_curves(run.paths, work / "curves.png")
    scores = explain(
        run,
        ExplainOptions(
            **asdict(test),
            methods=tuple(options.methods),
            count=options.score_images,
            steps=options.steps,
            out=work / "explain",
            sanity=options.sanity,
        ),
    )
    gallery = _gallery(run, run.loader(test), options.per_group, work / "gallery")
    by_finding = (
        finding_localisation(run, run.loader(test), resolve_methods(list(options.methods)), options.score_images)
        if run.kind == "multilabel" and scores.has_masks
        else {}
    )
    atomic_write(out, _page(run, evaluation, curves, scores, gallery, by_finding))
    return Report(out, evaluation, scores)


def evaluate_with_report(
    run: Run, options: EvaluateOptions | None = None, report: bool = True
) -> tuple[Evaluation, Report | None]:
    """Evaluate; when that evaluation is of the run's test split without test-time augmentation (what a
    report describes) and ``report`` is on, also write the report from it, reading the split once for both."""
    options = options or EvaluateOptions()
    evaluation = evaluate(run, options)
    if not report or options.source is not None or options.images or options.split != "test" or options.tta:
        return evaluation, None
    return evaluation, write_report(run, ReportOptions(skip_bad=options.skip_bad), evaluation)


def gallery_picks(run: Run, probs: torch.Tensor, labels: torch.Tensor, per_group: int) -> list[GalleryPick]:
    """(position, finding whose maps are drawn, group) of the gallery: by outcome, or per finding when multi-label."""
    if run.kind == "multilabel":
        return finding_gallery_order(probs, labels, run.label_thresholds, per_group)
    return [(position, None, group) for position, group, _ in gallery_order(run, probs, labels, per_group)]


def _gallery(run: Run, loader: BatchLoader, per_group: int, folder: Path) -> list[str]:
    """HTML figures of test images grouped by outcome (per finding when multi-label), each with every attention
    tap and Grad-CAM of the predicted class (of the finding)."""
    probs, labels, rows = predict_loader(run, loader)
    chosen = gallery_picks(run, probs, labels, per_group)
    if not chosen:
        return []
    manifest = loader.decoded.manifest
    batch = next(iter(loader.subset(np.array(sorted({int(rows[p]) for p, _, _ in chosen})))))
    where = {row: index for index, row in enumerate(batch["row"].tolist())}
    explanations = {
        target: explain_batch(run, batch["image"], ["attention", "gradcam"], target=target)
        for target in dict.fromkeys(target for _, target, _ in chosen)
    }
    parts, current = [], None
    for number, (position, target, group) in enumerate(chosen):
        row = int(rows[position])
        index, explanation = where[row], explanations[target]
        figure = write_attention_grid(
            batch["image"][index : index + 1],
            {k: v[index : index + 1] for k, v in explanation.maps.items()},
            [manifest.ids[row]],
            folder / f"{number:03d}.png",
            normalise_maps=False,
        )
        heading = group if target is None else f"{run.classes[target]}: {group}"
        if heading != current:
            parts.append(f"<h3>{html.escape(heading)}</h3>")
            current = heading
        caption = (
            f"{html.escape(manifest.ids[row])}: true {html.escape(manifest.label_text(row))}; "
            f"{html.escape(probability_text(run, probs[position]))}"
        )
        parts.append(
            f'<figure><img src="{png_file_uri(figure)}" alt="{html.escape(manifest.ids[row])}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return parts


def _interval(drawn: dict, kind: str, name: str) -> str:
    """``0.912 to 0.951`` of a metric's interval, or empty."""
    values = drawn.get(kind, {}).get(name)
    if not values or any(math.isnan(v) for v in values):
        return ""
    return f"{values[0]:.3f} to {values[1]:.3f}"


# what the report's table calls each metric: every figure at one threshold, the one chosen on validation
SHOWN_METRICS = {
    "auc": "AUC",
    "ap": "average precision",
    "sensitivity_at_threshold": "sensitivity at the threshold",
    "specificity_at_threshold": "specificity at the threshold",
    "threshold": "threshold",
    "accuracy": "accuracy (arg-max)",  # multi-class only: it has no threshold
    "rows": "images",
}


def _metric_rows(run: Run, metrics: dict) -> list[list]:
    """Each headline metric at the run's one threshold, with its bootstrap and DeLong intervals, then per class."""
    drawn = metrics.get("intervals", {})
    shown = {k: v for k, v in SHOWN_METRICS.items() if k != "accuracy" or run.kind == "multiclass"}
    if isinstance(metrics.get("threshold"), float):
        shown["threshold"] = f"threshold (chosen on validation: {metrics.get('threshold_policy', 'youden')})"
    rows = [
        [label, metrics[name], _interval(drawn, "intervals", name), _interval(drawn, "delong", name)]
        for name, label in shown.items()
        if not isinstance(metrics.get(name), (list, dict, type(None)))
    ]
    for key in ("auc_per_class", "ap_per_class"):
        for name, value in zip(run.classes, metrics.get(key) or [], strict=False):
            label = f"{key[: -len('_per_class')]} ({name})"
            rows.append([label, value, _interval(drawn, "intervals", label), _interval(drawn, "delong", label)])
    return rows


def interval_note(metrics: dict) -> str:
    """What the intervals are, in one sentence."""
    drawn = metrics.get("intervals", {})
    if not drawn.get("intervals"):
        return "No confidence intervals were drawn."
    return (
        f"Intervals at {drawn['level']:.0%}: {drawn['method']} with {drawn['resamples']} resamples of the "
        f"{drawn['units']} {drawn['unit']}s (seed {drawn['seed']}), at the validation threshold; DeLong's "
        "interval of each AUC beside it. A narrow interval needs many test images."
    )


def _taps(weights: dict) -> str:
    return ", ".join(f"{tap} (weight {weight})" for tap, weight in weights.items())


def supervision_text(run: Run) -> str:
    """Which attention supervision trained the run, so a reader knows what the maps were asked to do."""
    section = run.config.supervision
    parts = []
    if section.weights and section.kind == "self_focal":
        parts.append(
            f"self-guided focal attention loss on {_taps(section.weights)} (no masks; threshold "
            f"{section.threshold}, ignore_th {section.ignore_th}, gamma {section.gamma})"
        )
    elif section.weights:
        train_rows = run.summary["counts"]["train"]["rows"]
        with_masks = run.summary.get("train_rows_with_masks")
        share = (
            f"the masks of {with_masks} of {train_rows} training images (data.mask_fraction "
            f"{run.config.data.mask_fraction})"
            if with_masks is not None
            else f"the masks of every training image ({train_rows})"
        )
        parts.append(f"{section.kind} loss between the lesion masks and {_taps(section.weights)}, from {share}")
    if section.consistency:
        parts.append(
            f"attention consistency under the training augmentation (Guo et al. 2019) on {_taps(section.consistency)}"
        )
    return "; ".join(parts) or "none: the maps are learned from the labels alone"


def data_text(source: str, options: dict) -> str:
    """``csv: csv_path=train.csv, layout=chexpert``: the source and its options as a reader would write them."""
    shown = ", ".join(
        f"{key}=[{', '.join(map(str, v))}]" if isinstance(v, (list, tuple)) else f"{key}={v}"
        for key, v in options.items()
    )
    return f"{source}: {shown}" if shown else source


def _config_rows(run: Run) -> list[list]:
    config, best, counts = run.config, run.best, run.summary["counts"]
    return [
        ["model", config.model.name],
        ["data", data_text(config.data.source, config.data.source_options)],
        ["classes", ", ".join(run.classes)],
        ["image size", config.data.image_size],
        ["images (train / val / test)", " / ".join(str(counts[s]["rows"]) for s in ("train", "val", "test"))],
        ["loss", f"{config.loss.name}"],
        ["attention supervision", supervision_text(run)],
        ["optimiser", f"{config.optim.name}, lr {config.optim.lr}"],
        ["epochs", config.trainer.epochs],
        ["best epoch", f"{best.get('epoch', -1) + 1} ({best.get('monitor')} {_number(best.get('value'))})"],
    ]


CALIBRATION_NAMES = (("ece", "ECE (15 equal-width bins)"), ("ece_equal_mass", "ECE (15 equal-mass bins)"),
                     ("mce", "MCE"), ("brier", "Brier score"))  # fmt: skip


def subgroup_section(evaluation: Evaluation) -> str:
    """Each subgroup's AUC with its interval, its sensitivity and specificity at the threshold, and its gap to the
    whole test set (``evaluate --by``); empty when none was asked for."""
    parts = []
    for by, found in evaluation.metrics.get("subgroups", {}).items():
        rows = [
            [name, values["images"], values["auc"], _interval({"i": values["intervals"]}, "i", "auc"),
             values["sensitivity_at_threshold"], values["specificity_at_threshold"], values["auc_gap"]]
            for name, values in found.items()
        ]  # fmt: skip
        header = ["subgroup", "images", "AUC", "interval", "sensitivity", "specificity", "AUC gap to all"]
        parts.append(f"<h3>by {html.escape(by)}</h3>{_table(header, rows)}")
    if not parts:
        return ""
    return (
        '<section id="subgroups"><h2>Subgroups</h2><p>The same metrics on each subgroup of the test images, at the '
        "same threshold; a gap whose interval is wide may be the small subgroup's noise.</p>" + "".join(parts)
        + "</section>"
    )  # fmt: skip


def _pair(point: dict) -> str:
    return " / ".join("–" if math.isnan(point[k]) else f"{point[k]:.3f}" for k in ("sensitivity", "specificity"))


def referral_section(evaluation: Evaluation) -> str:
    """The band of probabilities referred to a clinician, chosen on validation, and what it does on the test
    images; with the coverage curve. Empty without one."""
    referral = evaluation.metrics.get("referral")
    if not referral:
        return ""
    target = referral["target_sensitivity"]
    rows = []
    for name, values in referral["findings"].items():
        band, tested = values["band"], values["test"]
        rows.append([name, f"{band['low']:.2f} to {band['high']:.2f}", "yes" if band["met"] else "no",
                     tested["referred"], tested["sensitivity"], tested["specificity"]])  # fmt: skip
    names = list(referral["findings"])
    curves = [  # one row per coverage, "sensitivity / specificity" per finding
        [
            f"{point['coverage']:.0%}",
            *(_pair(referral["findings"][name]["curve"][index]) for name in names),
        ]
        for index, point in enumerate(referral["findings"][names[0]]["curve"])
    ]
    header = ["finding", "referred when p is in", f"sensitivity {target:g} reached on validation", "referred (test)",
              "sensitivity of the rest", "specificity of the rest"]  # fmt: skip
    return (
        '<section id="referral"><h2>Referral of uncertain cases</h2><p>The images whose probability lies in a band '
        f"around the threshold go to a clinician; the band is the narrowest that lets the model reach sensitivity "
        f"{target:g} on the validation images it decides. On the test images:</p>{_table(header, rows)}"
        "<p>Coverage (the share the model decides, the least sure referred) against sensitivity and specificity "
        f"among the decided (sensitivity / specificity):</p>{_table(['coverage', *names], curves)}</section>"
    )


def calibration_section(run: Run, evaluation: Evaluation) -> str:
    """How far the probabilities mean what they say, before and after the run's temperature scaling, on the
    validation split it was fitted on and on the test split."""
    columns = {
        "validation, uncalibrated": run.calibration.get("val_before"),
        "validation, calibrated": run.calibration.get("val_after"),
        "test, uncalibrated": evaluation.metrics.get("calibration_uncalibrated"),
        "test" + (", calibrated" if run.temperature is not None else ""): evaluation.metrics.get("calibration"),
    }
    shown: dict[str, dict] = {name: values for name, values in columns.items() if values}
    rows = [[label, *(values.get(key) for values in shown.values())] for key, label in CALIBRATION_NAMES]
    if run.calibration.get("method") == "per fold":
        how = "A fold ensemble: each fold's probabilities are calibrated on its own validation part, then averaged."
    elif run.temperature is None:
        how = "The probabilities are the model's own: this run has no temperature fitted (attnscope calibrate RUN)."
    else:
        how = (
            f"Temperature scaling (Guo et al. 2017) fitted on the {html.escape(run.calibration['fitted_on'])}: the "
            f"logits are divided by T = {html.escape(_temperatures(run))}, which keeps every ranking, AUC and "
            "decision and makes the probabilities match observed frequencies."
        )
    return (
        f'<section id="calibration"><h2>Calibration</h2><p>{how} Lower is better: ECE is the mean gap between '
        "predicted probability and observed frequency, MCE the largest gap of a bin, the Brier score the mean "
        f"squared error of the probabilities.</p>{_table(['', *shown], rows)}</section>"
    )


def _temperatures(run: Run) -> str:
    temperature = run.temperature
    if isinstance(temperature, list):
        return ", ".join(f"{name} {t:.3f}" for name, t in zip(run.classes, temperature, strict=True))
    return f"{temperature:.3f}"


def _finding_sections(run: Run, evaluation: Evaluation, by_finding: dict[str, dict[str, dict[str, float]]]) -> str:
    """A multi-label run's figures per finding: its metrics at its operating point, and where its maps point."""
    parts = [
        '<section id="findings"><h2>Per finding</h2><p>Each finding as its own binary problem over the test images '
        "where it is labelled (uncertain labels left out); the threshold is the one chosen on validation.</p>"
        f"{_table(FINDING_METRIC_HEADER, finding_metric_rows(run.classes, evaluation.metrics))}"
    ]
    methods = list(dict.fromkeys(method for entry in by_finding.values() for method in entry))
    for score, meaning in (("pointing_game", "pointing game"), ("energy", "energy inside the boxes")):
        rows = [[method, *(by_finding.get(name, {}).get(method, {}).get(score) for name in run.classes)]
                for method in methods]  # fmt: skip
        if rows:
            parts.append(
                f"<h3>Maps of each finding: {meaning}</h3><p>The maps of a finding on the test images where it is "
                "present and boxed, against the image's boxes (higher is better).</p>"
                f"{_table(['method', *run.classes], rows)}"
            )
    return "".join(parts) + "</section>"


def score_table(scores: Explanation) -> tuple[list[str], list[list]]:
    """The scores table: each method's mean scores and, where checked, its sanity (Adebayo et al.'s: a map that does
    not depend on the image or the weights is flagged)."""
    header = ["method", *[n for n in SCORE_NAMES if any(n in e for e in scores.summary.values())]]
    rows = [[method, *[entry.get(n) for n in header[1:]]] for method, entry in scores.summary.items()]
    if scores.sanity is not None:
        flags = scores.sanity.flags()
        header.append("sanity")
        rows = [[*row, flags.get(str(row[0]), "") or "passes"] for row in rows]
    return header, rows


def _page(
    run: Run,
    evaluation: Evaluation,
    curves: Path | None,
    scores: Explanation,
    gallery_html: list[str],
    by_finding: dict[str, dict[str, dict[str, float]]] | None = None,
) -> str:
    score_header, score_rows = score_table(scores)
    plots = "".join(
        f'<img src="{png_file_uri(p)}" alt="{name}" id="plot-{name}">' for name, p in evaluation.plots.items()
    )
    where = "with masks: localisation and faithfulness" if scores.has_masks else "without masks: faithfulness only"
    gallery_target = "the finding it is shown under" if run.kind == "multilabel" else "the predicted class"
    sections = [
        f'<h1>attnscope report: {html.escape(run.root.name)}</h1><p class="muted">{html.escape(str(run.root))}</p>',
        f'<section id="config"><h2>Run</h2>{_table(["setting", "value"], _config_rows(run), numeric_from=2)}</section>',
        f'<section id="metrics"><h2>Test metrics</h2>'
        f"<p>{html.escape(evaluation.data)}, thresholds chosen on validation. "
        f"{html.escape(interval_note(evaluation.metrics))}</p>"
        f"{_table(['metric', 'value', 'interval', 'DeLong'], _metric_rows(run, evaluation.metrics))}</section>",
        f'<section id="plots" class="plots"><h2>ROC, precision-recall, confusion, reliability</h2>{plots}</section>',
    ]
    sections.append(calibration_section(run, evaluation))
    sections.append(subgroup_section(evaluation))
    sections.append(referral_section(evaluation))
    if run.kind == "multilabel":
        sections.append(_finding_sections(run, evaluation, by_finding or {}))
    if curves is not None:
        sections.append(
            f'<section id="curves"><h2>Training curves</h2>'
            f'<img src="{png_file_uri(curves)}" alt="training curves"></section>'
        )
    sections.append(
        f'<section id="scores"><h2>Where the model looks: scores</h2>'
        f"<p>{scores.images} test images, {where}. Pointing game, energy and Jaccard (map &ge; 0.5): "
        f"higher is better; deletion AUC: lower is better; insertion AUC: higher is better. Sanity (Adebayo et al. "
        "2018, on a few test images): a map that stays the same when the model's weights are randomised, or "
        "looks the same on every image, is flagged: it cannot be trusted to show what the model saw.</p>"
        f"{_table(score_header, score_rows)}</section>"
    )
    sections.append(
        '<section id="gallery" class="gallery"><h2>Gallery</h2>'
        f"<p>Each row: the input, every attention tap and Grad-CAM of {gallery_target}.</p>"
        + "".join(gallery_html)
        + "</section>"
    )
    return document(f"attnscope report: {run.root.name}", STYLE, "".join(sections))
