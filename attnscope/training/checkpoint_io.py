"""Lightning's checkpoint IO made atomic and weights-only: the training state of ``--resume``.

It lives apart from :mod:`attnscope.engine.rundir` so that opening a finished run
(evaluate, explain, index) never imports Lightning.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from attnscope.errors import CheckpointError
from attnscope.fileio import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, written through a temporary file and a rename, read weights-only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(Path(path), buffer.getvalue())

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no training state to resume from")
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise CheckpointError(
                f"{path}: the training state cannot be read ({error}); resume from a copy, or start a new run"
            ) from error
