"""``attnscope compare RUN_A RUN_B``: both runs predict the same images, the differences are tested
(:mod:`attnscope.engine.compare`), and ``comparison.json`` and a self-contained ``comparison.html`` are written."""

from __future__ import annotations

import html
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from attnscope.engine.compare import (
    CompareOptions,
    Comparison,
    aligned,
    check_comparable,
    compare_column,
)
from attnscope.engine.inference import predict_loader
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.rundir import write_json
from attnscope.fileio import atomic_write
from attnscope.htmlpage import document
from attnscope.outputs import COMPARISON, prepare_output_folder


def _predicted(run: Run, selection: DataSelection) -> tuple[np.ndarray, np.ndarray, list[str], list[str | None] | None]:
    """Calibrated probabilities (one column per finding), labels, ids and groups of the selected images."""
    loader = run.loader(selection)
    probs, labels, rows = predict_loader(run, loader, "compare")
    manifest = loader.decoded.manifest
    ids = [manifest.ids[int(r)] for r in rows]
    groups = [manifest.groups[int(r)] for r in rows] if manifest.groups else None
    columns = probs.numpy().reshape(len(ids), -1)
    return columns, labels.numpy().reshape(len(ids), -1).astype(np.float64), ids, groups


def compare_runs(run_a: Run, run_b: Run, options: CompareOptions | None = None) -> Comparison:
    """Two runs on the same images, compared per finding with paired tests.

    Args:
        run_a: the first run (its test split is the default set of images).
        run_b: the second run; its classes must be the first's.
        options: the images (``source`` for another data set), the bootstrap, where to write.

    Returns:
        Per finding: both AUCs, their paired difference with its interval and DeLong's test, and McNemar's
        test of the decisions at each run's own threshold.

    Raises:
        ConfigError: the runs' classes or tasks differ."""
    options = options or CompareOptions()
    check_comparable(run_a.classes, run_b.classes, run_a.kind, run_b.kind)
    selection = DataSelection(options.split, options.source, dict(options.source_options), (), options.skip_bad)
    probs_a, labels, ids_a, groups = _predicted(run_a, selection)
    probs_b, _, ids_b, _ = _predicted(run_b, selection)
    order_a, order_b = aligned(ids_a, ids_b)
    probs_a, labels, probs_b = probs_a[order_a], labels[order_a], probs_b[order_b]
    names = [run_a.classes[1]] if run_a.kind == "binary" else list(run_a.classes)
    thresholds_a = [run_a.binary_threshold] if run_a.kind == "binary" else run_a.label_thresholds
    thresholds_b = [run_b.binary_threshold] if run_b.kind == "binary" else run_b.label_thresholds
    columns = [
        compare_column(
            name,
            (probs_a[:, c], probs_b[:, c]),
            labels[:, c],
            (thresholds_a[c], thresholds_b[c]),
            groups,
            options.bootstrap,
        )
        for c, name in enumerate(names)
    ]
    unit = "patient" if groups and any(g is not None for g in groups) else "image"
    return Comparison(str(run_a.root), str(run_b.root), selection.describe(), len(ids_a), unit, columns)


def write_comparison(comparison: Comparison, out: str | Path) -> Comparison:
    """``comparison.json`` and ``comparison.html`` in ``out`` (a new folder, or one a comparison wrote)."""
    folder = prepare_output_folder(out, COMPARISON)
    write_json(folder / "comparison.json", asdict(comparison) | {"out": str(folder)})
    atomic_write(folder / "comparison.html", _page(comparison))
    comparison.out = folder
    return comparison


def _number(value: float, digits: int = 3) -> str:
    return "&ndash;" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _interval(values: list[float] | None) -> str:
    if not values or any(math.isnan(v) for v in values):
        return "&ndash;"
    return f"{values[0]:+.3f} to {values[1]:+.3f}"


def _row(column) -> str:
    delong, test = column.delong, column.mcnemar
    cells = [
        html.escape(column.name), str(column.rows), _number(delong["auc_a"]), _number(delong["auc_b"]),
        f"{delong['difference']:+.3f}" if not math.isnan(delong["difference"]) else "&ndash;",
        _interval(column.intervals.get("auc")), _number(delong["p"], 4),
        f"{_number(column.sensitivity[0])} / {_number(column.sensitivity[1])}",
        f"{_number(column.specificity[0])} / {_number(column.specificity[1])}",
        f"{test['only_a']} / {test['only_b']}", _number(test["p"], 4),
    ]  # fmt: skip
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _page(comparison: Comparison) -> str:
    header = ["finding", "images", "AUC A", "AUC B", "A &minus; B", "interval", "DeLong p", "sensitivity A / B",
              "specificity A / B", "right only by A / B", "McNemar p"]  # fmt: skip
    table = "<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"
    table += "".join(_row(column) for column in comparison.columns) + "</table>"
    body = (
        f"<h1>Two runs on the same images</h1><p>A: {html.escape(comparison.run_a)}<br>"
        f"B: {html.escape(comparison.run_b)}<br>{html.escape(comparison.data)}: {comparison.images} images.</p>"
        f"{table}<p>AUC: DeLong's paired test (the two curves share the images). Decisions at each run's own "
        "threshold, chosen on its validation split: McNemar's exact test on the images one run gets right and the "
        f"other wrong. Intervals: the same {comparison.unit}s drawn for both runs (bootstrap). A p-value above "
        "0.05 says these images cannot tell the runs apart, not that they are equal.</p>"
    )
    style = "body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px}td,th{border:1px solid #ddd;" \
            "padding:.25rem .6rem}table{border-collapse:collapse}th{background:#f4f4f4}"  # fmt: skip
    return document("attnscope comparison", style, body)
