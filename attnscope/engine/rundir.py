"""The run directory: where a run's files live, and how its weights are written and read.

::

    RUN/
      config.yaml            resolved config (reproduces the run)
      split.csv data.json    the manifest with its split, data summary (+ bad_rows.csv)
      checkpoints/
        best.safetensors     weights of the best epoch (by trainer.monitor)
        last.safetensors     weights of the last finished epoch
        last.ckpt            full training state for --resume (weights, optimiser, schedule, loops)
      best.json              the best epoch, its metrics and the validation threshold
      calibration.json       the temperature fitted on validation, and the threshold on its scale
      metrics.csv            one row per epoch
      tensorboard/           TensorBoard events
      train.log              the log of every session of the run

Every file is written atomically. Weights are safetensors (no pickle: safe to
share); the training state is torch's format, read back only with
``weights_only=True``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from attnscope.errors import CheckpointError, ConfigError, DataError, is_number, shown
from attnscope.fileio import atomic_write, process_gone, read_marker, sweep_temporaries, write_marker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    """Paths inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best_weights(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def last_weights(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def last_state(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def best(self) -> Path:
        return self.root / "best.json"

    @property
    def calibration(self) -> Path:
        """The temperature fitted on validation (``trainer.calibration``), with the weights it was fitted to."""
        return self.root / "calibration.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def data(self) -> Path:
        return self.root / "data.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def budget(self) -> Path:
        """What ``trainer.time_budget_s`` measured, planned and re-planned (runs with a budget only)."""
        return self.root / "budget.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def weights(self, which: str) -> Path:
        """``best``, ``last``, or a path to a weights file."""
        if which in ("best", "last"):
            return self.best_weights if which == "best" else self.last_weights
        return Path(which)

    def require(self) -> RunPaths:
        """Self, after checking this is a run directory at all."""
        if not self.config.is_file():
            raise CheckpointError(
                f"{self.root} is not a run directory (no config.yaml); pass the folder `attnscope train` printed"
            )
        return self


STAGES_FILE = "stages.json"
FOLDS_FILE = "folds.json"


def fold_folder(root: Path, fold: int) -> Path:
    """The run directory of fold ``fold`` (1-based) of a cross-validation folder."""
    return Path(root) / f"fold{fold}"


def fold_runs(path: Path) -> list[Path] | None:
    """The fold run directories of a cross-validation folder (``folds.json``), or None for any other path."""
    try:
        state = json.loads((Path(path) / FOLDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return [fold_folder(Path(path), fold) for fold in range(1, int(state["folds"]) + 1)]


def stage_folder(root: Path, index: int, stage: str) -> Path:
    """The run directory of stage ``index`` (0-based) of a staged training folder."""
    return Path(root) / f"stage{index + 1}-{stage}"


def final_stage(path: Path) -> Path:
    """``path`` itself, or for a staged training folder (``stages.json``) its last stage's run directory."""
    try:
        state = json.loads((Path(path) / STAGES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Path(path)
    stages = state["plan"]["stages"]
    return stage_folder(Path(path), len(stages) - 1, stages[-1])


LOCK_NAME = ".lock"


class RunLock:
    """The lock a training process holds on its run directory for the whole run.

    ``RUN/.lock`` is created exclusively and names the holder (pid, host, start). A
    second process gets a ConfigError naming the holder. A lock whose process is
    gone (same host, pid no longer alive: a killed run) is stale and is taken over;
    a lock from another host is never second-guessed.
    """

    def __init__(self, root: Path) -> None:
        self.path, self.target, self.doing, self.hint = root / LOCK_NAME, root, "trained", "choose another --run-dir"

    @classmethod
    def beside(cls, folder: Path, doing: str, hint: str) -> RunLock:
        """A lock on ``folder`` kept beside it (``.NAME.lock``), for a folder that is replaced whole by a
        rename (an index), which would take a lock inside it along."""
        lock = cls(folder)
        lock.path, lock.doing, lock.hint = folder.parent / f".{folder.name}{LOCK_NAME}", doing, hint
        return lock

    def __enter__(self) -> RunLock:
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is not None and not _stale(holder):
                    raise ConfigError(
                        f"{self.target} is being {self.doing} by process {holder.get('pid')} on "
                        f"{holder.get('host')} since {holder.get('started')}; wait for it to finish or "
                        f"{self.hint} (if that process is gone, remove {self.path})"
                    ) from None
                log.warning("taking over the stale lock %s (%s)", self.path, holder or "unreadable")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "started": datetime.now().isoformat(timespec="seconds"),
                    },
                    handle,
                )
            return self
        raise ConfigError(f"{self.path}: could not take the run's lock; try again")

    def __exit__(self, *exc: object) -> None:
        holder = self.holder()
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def holder(self) -> dict | None:
        """Who holds the lock (pid, host, started), or None if the file cannot be read."""
        try:
            values = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return values if isinstance(values, dict) else None


def _stale(holder: dict) -> bool:
    """True when the lock's process is known to be gone: same host, pid not alive."""
    return process_gone(holder.get("host"), holder.get("pid"))


def prepare_run_dir(paths: RunPaths, resume: bool) -> None:
    """Create the run directory, or check that an existing one may be trained into.

    A new run goes into a new folder, an empty one, or attnscope's own run folder of
    a start that failed before writing ``config.yaml``; never into a user's folder.
    """
    root = paths.root
    if resume:
        paths.require()
        return
    if paths.config.exists():
        raise ConfigError(f"{root} already holds a run; continue it with --resume {root}, or choose another --run-dir")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        marker = read_marker(root) if root.is_dir() else None
        if marker is None or marker.get("kind") != "run":
            raise DataError(
                f"{root} exists and is not an empty folder or an attnscope run; attnscope creates a run only in "
                "a new or empty folder: choose another --run-dir"
            )
    root.mkdir(parents=True, exist_ok=True)
    if read_marker(root) is None:
        write_marker(root, "run")


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """The model's state dict as safetensors, atomically."""
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}
    return atomic_write(path, save_safetensors(tensors, metadata=metadata or {}))


BEST_KEY = "best"


def save_best(model: torch.nn.Module, paths: RunPaths, record: dict[str, Any], metadata: dict[str, str]) -> None:
    """The best epoch's weights with their record (epoch, metrics, validation threshold) inside them.

    The record travels in the safetensors metadata, so weights and threshold are
    committed by one rename: a kill between the two writes leaves ``best.json`` (the
    readable copy) one epoch behind, and :func:`read_best` trusts the weights' own.
    """
    record = _null_nan(record)
    save_weights(model, paths.best_weights, {**metadata, BEST_KEY: json.dumps(record)})
    write_json(paths.best, record)


def read_best(paths: RunPaths) -> dict[str, Any]:
    """The best epoch's record: the one inside the best weights, else ``best.json``, else empty."""
    if paths.best_weights.is_file():
        try:
            with safe_open(paths.best_weights, framework="pt") as handle:
                recorded = (handle.metadata() or {}).get(BEST_KEY)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{paths.best_weights}: not a readable safetensors file ({error})") from error
        if recorded is not None:
            try:
                values = json.loads(recorded)
            except ValueError as error:
                raise CheckpointError(f"{paths.best_weights}: its best-epoch record is damaged ({error})") from error
            if isinstance(values, dict):
                return check_best_record(values, paths.best_weights)
    return check_best_record(read_json(paths.best), paths.best) if paths.best.exists() else {}


def check_best_record(values: Any, source: Path) -> dict[str, Any]:
    """The best-epoch record when its threshold is a probability (one, or one per label) or absent: a
    damaged threshold would otherwise decide every prediction, silently."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{source}: the best-epoch record is not a mapping; the run's record is damaged")
    threshold = values.get("threshold")
    listed: list[Any] = threshold if isinstance(threshold, list) and threshold else [threshold]
    if threshold is not None and not all(is_number(t) and 0 <= float(t) <= 1 for t in listed):
        raise CheckpointError(
            f"{source}: the recorded threshold {shown(threshold)} is not a probability in [0, 1]; the run's "
            "record is damaged: train it again, or restore the file from a copy"
        )
    return values


def sweep_run(paths: RunPaths) -> None:
    """Remove what killed sessions of this run left half-written (temporary files of atomic writes)."""
    for folder in (paths.root, paths.checkpoints):
        sweep_temporaries(folder)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a missing or damaged file raises CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no weights file; has the run finished an epoch yet?")
    try:
        tensors = load_safetensors(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    damaged = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if damaged:
        listed = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")
        raise CheckpointError(
            f"{path}: {len(damaged)} tensor(s) hold NaN or infinite values ({listed}), so every prediction "
            "would be NaN; use other weights (--weights last, or a checkpoint) or train again"
        )
    return tensors


def write_metrics_csv(path: Path, history: list[dict[str, float]]) -> Path:
    """One row per epoch; columns are the union of every epoch's keys, in first-seen order."""
    columns: list[str] = []
    for row in history:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return atomic_write(path, buffer.getvalue())


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(handle)]


def write_json(path: Path, values: dict) -> Path:
    """JSON with NaN written as null (strict JSON readers refuse NaN)."""
    return atomic_write(path, json.dumps(_null_nan(values), indent=2) + "\n")


def _null_nan(values: Any) -> Any:
    if isinstance(values, float) and math.isnan(values):
        return None
    if isinstance(values, dict):
        return {k: _null_nan(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [_null_nan(v) for v in values]
    return values


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot be read ({error})") from error
