"""ROC, precision-recall, confusion and reliability plots of an evaluation, as PNG files (matplotlib, no display).

Curves are one line per class one-vs-rest for multi-class and per label for
multi-label; the binary ROC marks the validation (Youden) operating point.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

from attnscope.fileio import atomic_write


def literal_text() -> contextlib.AbstractContextManager:
    """Figures made inside show text as written: a file or class named ``price$x$.png`` is not
    matplotlib mathtext (which would fail to parse, or render as a formula)."""
    return matplotlib.rc_context({"text.parse_math": False})


def save_figure(figure: plt.Figure, path: Path) -> Path:
    """PNG of ``figure``, written atomically; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return atomic_write(path, buffer.getvalue())


def _columns(probs: torch.Tensor, labels: torch.Tensor, kind: str, classes: list[str]):
    """(name, scores, 0/1 targets) per curve: the positive class, each class vs rest, or each label."""
    if kind == "binary":
        yield classes[1], probs, labels.long()
    elif kind == "multiclass":
        for c, name in enumerate(classes):
            yield name, probs[:, c], (labels == c).long()
    else:  # a label left out of a row (NaN: uncertain, ignored) is left out of its curve
        for c, name in enumerate(classes):
            known = ~torch.isnan(labels[:, c].float())
            yield name, probs[known, c], labels[known, c].long()


def _defined(targets: torch.Tensor) -> bool:
    positives = int(targets.sum())
    return 0 < positives < len(targets)


def _curves(axes, probs, labels, kind, classes, values, what: str, curve) -> None:
    """One line per column with a defined curve; ``curve(scores, targets)`` -> (x, y)."""
    for (name, scores, targets), value in zip(_columns(probs, labels, kind, classes), values, strict=False):
        if _defined(targets):
            x, y = curve(scores, targets)
            axes.plot(x.numpy(), y.numpy(), label=f"{name} ({what} {value:.3f})")


def roc_figure(probs, labels, kind, classes, summary) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    _curves(
        axes,
        probs,
        labels,
        kind,
        classes,
        summary.get("auc_per_class") or [summary.get("auc")],
        "AUC",
        lambda scores, targets: binary_roc(scores, targets)[:2],
    )
    if kind == "binary" and not math.isnan(summary.get("sensitivity_youden", math.nan)):
        axes.plot(
            1 - summary["specificity_youden"],
            summary["sensitivity_youden"],
            "o",
            color="black",
            label=f"threshold {summary['threshold']:.3f}",
        )
    axes.plot([0, 1], [0, 1], ":", color="grey")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right", fontsize="small")
    return figure


def pr_figure(probs, labels, kind, classes, summary) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    _curves(
        axes,
        probs,
        labels,
        kind,
        classes,
        summary.get("ap_per_class") or [summary.get("ap")],
        "AP",
        lambda scores, targets: binary_precision_recall_curve(scores, targets)[1::-1],
    )
    axes.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower left", fontsize="small")
    return figure


def confusion_figure(summary: dict, kind: str, classes: list[str]) -> plt.Figure:
    """Counts with true classes as rows, at the run's operating threshold (arg-max for multi-class); multi-label
    shows one 2x2 matrix per label at its own threshold."""
    if kind == "multilabel":
        matrices = summary.get("confusion_at_threshold_per_class") or summary["confusion_per_class"]
        thresholds = summary.get("threshold") or [0.5] * len(classes)
        titles = [f"{name} (at {t:.2f})" for name, t in zip(classes, thresholds, strict=False)]
        ticks = [["no", "yes"]] * len(classes)
    elif kind == "binary":  # at the operating threshold every other figure and table of the run uses
        at = summary.get("threshold")
        matrices = [summary.get("confusion_at_threshold") or summary["confusion"]]
        titles = [f"Confusion at the threshold {at:.2f}" if isinstance(at, float) else "Confusion (threshold 0.5)"]
        ticks = [classes]
    else:
        matrices, titles, ticks = [summary["confusion"]], ["Confusion (arg-max)"], [classes]
    figure, axes_list = plt.subplots(1, len(matrices), figsize=(3.6 * len(matrices) + 0.6, 3.6), squeeze=False)
    for axes, matrix, title, names in zip(axes_list[0], matrices, titles, ticks, strict=True):
        values = torch.tensor(matrix, dtype=torch.float64)
        axes.imshow(values.numpy(), cmap="Blues")
        top = values.max().item() or 1.0
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                axes.text(
                    j,
                    i,
                    f"{int(values[i, j])}",
                    ha="center",
                    va="center",
                    color="white" if values[i, j] > top / 2 else "black",
                )
        axes.set_xticks(
            range(len(names)), names, rotation=45 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center"
        )
        axes.set_yticks(range(len(names)), names)
        axes.set(xlabel="predicted", ylabel="true", title=title)
    return figure


def _reliability_columns(probs: torch.Tensor, labels: torch.Tensor, kind: str, classes: list[str]):
    """(name, confidences, 0/1 outcomes) per line: the positive class, the top label, or each finding."""
    if kind == "multiclass":
        confidence, predicted = probs.max(1)
        yield "top label", confidence, (predicted == labels.long()).long()
    else:
        yield from _columns(probs, labels, kind, classes)


def reliability_figure(probs: torch.Tensor, labels: torch.Tensor, kind: str, classes: list[str], summary: dict):
    """The reliability diagram: observed frequency against mean probability per bin of equal width; on the
    diagonal, a probability means what it says."""
    from attnscope.engine.calibration import reliability_curve

    figure, axes = plt.subplots(figsize=(4.6, 4.2))
    axes.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, confidence, outcome in _reliability_columns(probs, labels, kind, classes):
        curve = reliability_curve(confidence, outcome)
        if curve:
            axes.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", markersize=3, label=name)
    ece = summary.get("calibration", {}).get("ece", math.nan)
    axes.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
             title=f"reliability (ECE {ece:.3f}, 15 equal-width bins)")  # fmt: skip
    axes.legend(fontsize=7, loc="upper left")
    return figure


def write_evaluation_plots(
    probs: torch.Tensor, labels: torch.Tensor, kind: str, classes: list[str], summary: dict, out: Path
) -> dict[str, Path]:
    """``roc.png``, ``pr.png``, ``confusion.png`` and ``reliability.png`` in ``out`` (class names as written)."""
    with literal_text():
        return {
            "roc": save_figure(roc_figure(probs, labels, kind, classes, summary), out / "roc.png"),
            "pr": save_figure(pr_figure(probs, labels, kind, classes, summary), out / "pr.png"),
            "confusion": save_figure(confusion_figure(summary, kind, classes), out / "confusion.png"),
            "reliability": save_figure(
                reliability_figure(probs, labels, kind, classes, summary), out / "reliability.png"
            ),
        }
