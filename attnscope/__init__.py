"""attnscope: attention-augmented image classifiers you can train, measure and explain.

The heavy names (anything that needs torch) are imported on first use, so that
``attnscope --version`` and ``--help`` answer at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from attnscope._version import __version__
from attnscope.errors import AttnscopeError, CheckpointError, ConfigError, DataError, TrainingError

_LAZY = {
    "AttentionTap": "attnscope.layers.tap",
    "capture_attention": "attnscope.layers.tap",
    "create_attn": "attnscope.layers.registry",
    "list_attn": "attnscope.layers.registry",
    "create_model": "attnscope.models",
    "list_models": "attnscope.models",
    # the run level: train a config, open the run (evaluate, explain, index: attnscope.engine, .explain, .retrieval)
    "load_config": "attnscope.engine.config",
    "train": "attnscope.training.train",
    "Run": "attnscope.engine.run",
    "DataSelection": "attnscope.engine.run",
    "run_demo": "attnscope.demo",
    "DemoOptions": "attnscope.demo",
}

__all__ = [
    "__version__",
    "AttnscopeError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "TrainingError",
    *_LAZY,
]

if TYPE_CHECKING:
    from attnscope.demo import DemoOptions as DemoOptions
    from attnscope.demo import run_demo as run_demo
    from attnscope.engine.config import load_config as load_config
    from attnscope.engine.run import DataSelection as DataSelection
    from attnscope.engine.run import Run as Run
    from attnscope.layers.registry import create_attn as create_attn
    from attnscope.layers.registry import list_attn as list_attn
    from attnscope.layers.tap import AttentionTap as AttentionTap
    from attnscope.layers.tap import capture_attention as capture_attention
    from attnscope.models import create_model as create_model
    from attnscope.models import list_models as list_models
    from attnscope.training.train import train as train


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'attnscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
