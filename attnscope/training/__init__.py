"""The training side: Lightning's loop over a config, into a run directory.

``train(config)`` trains one run, ``train_stages(config, plan)`` trains AG-CNN in stages, and
``resume(run_dir)`` continues either after a stop. What is used after training (``Run``,
evaluation, export) lives in :mod:`attnscope.engine`; this package writes runs through the
engine's run directory and is never imported by it, so opening a run does not load Lightning.
"""

from attnscope.training.resume import resume
from attnscope.training.stages import StagePlan, resume_stages, train_stages
from attnscope.training.train import TrainResult, resume_config, train

__all__ = ["StagePlan", "TrainResult", "resume", "resume_config", "resume_stages", "train", "train_stages"]
