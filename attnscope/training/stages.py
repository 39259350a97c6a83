"""Staged training: AG-CNN's three stages (Guan et al. 2018) in sequence, into one folder.

``train_stages(config, plan)`` trains the model once per stage (``global``, then ``local``, then
``fusion``), each stage a complete run directory of its own under the folder
(``stage1-global/``, ``stage2-local/``, ``stage3-fusion/``) with its own epochs and learning rate.
A stage starts from the best weights of the stage before it (the whole model: the branches trained
so far are carried over, the others keep their initialisation), and freezes every branch but its
own. ``stages.json`` records the plan, the config and which stages are done, so that
``resume_stages(folder)`` after a kill skips the finished stages, continues the stage that was
running from its last finished epoch, and starts the rest. The folder opens as its last stage's run
(``Run.open``, ``attnscope evaluate FOLDER``).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from attnscope.engine.config import RunConfig
from attnscope.engine.rundir import STAGES_FILE, RunPaths, stage_folder
from attnscope.errors import ConfigError, DataError
from attnscope.fileio import atomic_write, read_marker
from attnscope.models import model_entry
from attnscope.training.train import (
    TrainResult,
    finished_folder,
    new_folder_of_runs,
    resolve_run_dir,
    train_or_resume,
    with_progress,
)

log = logging.getLogger(__name__)

MARKER_KIND = "stages"


@dataclass(frozen=True)
class StagePlan:
    """The stages to train in order, and each one's epochs and learning rate (None: the config's)."""

    stages: tuple[str, ...]
    epochs: tuple[int, ...] | None = None
    lr: tuple[float, ...] | None = None

    def check(self, model_name: str) -> None:
        """Refuse a plan the model cannot follow, naming the option."""
        options = model_entry(model_name).options()
        if "stage" not in options:
            raise ConfigError(f"--stages trains a model in stages (AG-CNN); {model_name!r} has no stage option")
        known = ("global", "local", "fusion")
        unknown = [stage for stage in self.stages if stage not in known]
        if not self.stages or unknown or len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"--stages {','.join(self.stages)}: name each of {', '.join(known)} at most once")
        for option, values in (("--stage-epochs", self.epochs), ("--stage-lr", self.lr)):
            if values is not None and len(values) != len(self.stages):
                raise ConfigError(f"{option} gives {len(values)} value(s) for {len(self.stages)} stage(s)")
        if self.epochs is not None and any(int(e) != e or e < 1 for e in self.epochs):
            raise ConfigError(f"--stage-epochs {self.epochs}: each must be an integer >= 1")
        if self.lr is not None and any(v <= 0 for v in self.lr):
            raise ConfigError(f"--stage-lr {self.lr}: each must be > 0")


def stage_config(config: RunConfig, plan: StagePlan, index: int, root: Path) -> RunConfig:
    """The run config of stage ``index`` (0-based): its stage, epochs, learning rate, folder and start."""
    stage = plan.stages[index]
    result = copy.deepcopy(config)
    result.model.options = {**result.model.options, "stage": stage}
    result.run_dir = str(stage_folder(root, index, stage))
    if plan.epochs is not None:
        result.trainer.epochs = int(plan.epochs[index])
    if plan.lr is not None:
        result.optim.lr = float(plan.lr[index])
    if index > 0:  # the whole model as the stage before left it
        result.model.pretrained = str(RunPaths(stage_folder(root, index - 1, plan.stages[index - 1])).best_weights)
    return result


def _write_state(root: Path, config: RunConfig, plan: StagePlan, done: list[str]) -> None:
    state = {"plan": asdict(plan), "config": config.to_dict(), "done": done}
    atomic_write(root / STAGES_FILE, json.dumps(state, indent=2) + "\n")


def _prepare(root: Path) -> None:
    """A new staged folder goes into a new or empty folder, never into a user's or a run's."""
    new_folder_of_runs(root, MARKER_KIND, "staged training")


def train_stages(config: RunConfig, plan: StagePlan) -> TrainResult:
    """Train ``plan``'s stages in order into one new folder; returns the last stage's result."""
    plan.check(config.model.name)
    if config.trainer.time_budget_s is not None:
        raise ConfigError(
            "trainer.time_budget_s plans the epochs of one run, and --stages trains several: "
            "give each stage its epochs with --stage-epochs"
        )
    root = resolve_run_dir(config)
    _prepare(root)
    config = copy.deepcopy(config)
    config.run_dir = str(root)
    _write_state(root, config, plan, [])
    return _run(root, config, plan, [])


def resume_stages(root: str | Path, progress: bool | None = None) -> TrainResult:
    """Continue a staged folder after a stop: finished stages are kept, the running one resumes.

    ``progress`` overrides whether bars are shown, as in :func:`resume_config`.
    """
    root = Path(root)
    marker = read_marker(root)
    if marker is None or marker.get("kind") != MARKER_KIND or not (root / STAGES_FILE).is_file():
        raise DataError(f"{root} is not a staged training folder (no {STAGES_FILE}); pass the folder train printed")
    state = json.loads((root / STAGES_FILE).read_text(encoding="utf-8"))
    saved = state["plan"]
    plan = StagePlan(
        tuple(saved["stages"]),
        None if saved["epochs"] is None else tuple(saved["epochs"]),
        None if saved["lr"] is None else tuple(saved["lr"]),
    )
    config = with_progress(RunConfig.from_dict(state["config"]), progress)
    return _run(root, config, plan, list(state["done"]), progress)


def _run(root: Path, config: RunConfig, plan: StagePlan, done: list[str], progress: bool | None = None) -> TrainResult:
    result = None
    for index, stage in enumerate(plan.stages):
        folder = stage_folder(root, index, stage)
        if stage in done:
            log.info("stage %d/%d %s: done before, kept", index + 1, len(plan.stages), stage)
            continue
        log.info("stage %d/%d %s into %s", index + 1, len(plan.stages), stage, folder)
        result = train_or_resume(folder, stage_config(config, plan, index, root), progress)
        if not result.is_global_zero:
            continue
        done.append(stage)
        _write_state(root, config, plan, done)
    return finished_folder(root, stage_folder(root, len(plan.stages) - 1, plan.stages[-1]), result)
