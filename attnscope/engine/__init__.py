"""What is used after training: run config, metrics, the run directory, ``Run``, inference and export.

Importing this package does not import Lightning; the training side (:mod:`attnscope.training`)
does, and it writes runs through this package's run directory, never the other way.
"""

from attnscope.engine.inference import EvaluateOptions, Evaluation, Predictions, PredictOptions, evaluate, predict
from attnscope.engine.run import DataSelection, Run

__all__ = [
    "DataSelection",
    "EvaluateOptions",
    "Evaluation",
    "PredictOptions",
    "Predictions",
    "Run",
    "evaluate",
    "predict",
]
