"""The Lightning ``Trainer`` options every trainer of attnscope shares: the run's and the range test's."""

from __future__ import annotations

from typing import Any

from attnscope.training.precision import resolve_precision


def shared_trainer_options(section: Any) -> dict[str, Any]:
    """Device, precision and clipping from the ``trainer`` section; attnscope's own checkpoints, progress and
    samplers in place of Lightning's (``section`` is a :class:`~attnscope.engine.config.TrainerSection`)."""
    return {
        "accelerator": section.accelerator,
        "precision": resolve_precision(section.precision, section.accelerator),  # Lightning checks the name
        "gradient_clip_val": section.grad_clip,
        "enable_checkpointing": False,
        "enable_progress_bar": section.progress,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,
    }
