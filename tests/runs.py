"""Tiny training runs shared by the engine, CLI and explain tests."""

import os
import subprocess
import sys
from pathlib import Path

# A run small enough for a unit test: 160 generated lesions at 32 px, a tiny attention VGG.
TINY = [
    "--model",
    "attn_vgg_tiny",
    "--data",
    "synthetic_lesions",
    "--data-option",
    "count=160",
    "--data-option",
    "size=32",
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--lr",
    "0.001",
    "--no-progress",
]


def tiny_settings(run_dir: Path, epochs: int = 2) -> list[str]:
    return [
        f"run_dir={run_dir}",
        "model.name=attn_vgg_tiny",
        "data.source=synthetic_lesions",
        "data.source_options={count: 160, size: 32}",
        "data.image_size=32",
        "data.batch_size=16",
        "optim.lr=0.001",
        f"trainer.epochs={epochs}",
        "trainer.progress=false",
        "data.progress=false",
        "trainer.accelerator=cpu",
    ]


def run_cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m attnscope ARGS`` in a fresh process with 1 thread (bitwise-repeatable on a CPU)."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", **(env or {}))
    result = subprocess.run(
        [sys.executable, "-m", "attnscope", *args], capture_output=True, text=True, env=environment, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"attnscope {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result
