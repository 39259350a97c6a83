"""The training engine: run config, task (a LightningModule), metrics, the run directory, ``Run`` and inference.

Importing this package does not import Lightning; :mod:`attnscope.engine.train` does.
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
