"""Explanations: attention maps and CAMs of a run, drawn over their images and scored; the HTML report."""

from attnscope.explain.explainer import ExplainOptions, Explanation, explain
from attnscope.explain.report import Report, ReportOptions, evaluate_with_report, write_report

__all__ = [
    "ExplainOptions",
    "Explanation",
    "Report",
    "ReportOptions",
    "evaluate_with_report",
    "explain",
    "write_report",
]
