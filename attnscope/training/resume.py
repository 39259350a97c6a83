"""``resume(run_dir)``: continue a stopped run, whichever kind it is."""

from __future__ import annotations

from pathlib import Path

from attnscope.engine.rundir import FOLDS_FILE, STAGES_FILE
from attnscope.training.stages import resume_stages
from attnscope.training.train import TrainResult, resume_config, train


def resume(run_dir: str | Path, progress: bool | None = None) -> TrainResult:
    """Continue the run in ``run_dir`` from its last finished epoch, exactly as it was configured.

    A staged folder (``stages.json``, from :func:`~attnscope.training.stages.train_stages`) keeps its
    finished stages and continues the one that was running; any other folder must be a run directory.

    Args:
        run_dir: the folder ``train`` printed: a run directory or a staged folder.
        progress: show progress bars (True), hide them (False), or as the run was started (None);
            display only, it changes nothing the run computes.

    Returns:
        The result of the run (for a staged folder, of its last stage).

    Raises:
        CheckpointError: ``run_dir`` is not a run directory (it has no ``config.yaml``).
        DataError: a staged folder attnscope did not write.
    """
    if (Path(run_dir) / STAGES_FILE).is_file():
        return resume_stages(run_dir, progress)
    if (Path(run_dir) / FOLDS_FILE).is_file():
        from attnscope.training.folds import resume_folds

        return resume_folds(run_dir, progress)
    return train(resume_config(run_dir, progress), resume=True)
