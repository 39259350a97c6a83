from pathlib import Path

import pytest
import torch

from tests.runs import tiny_settings


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny run trained in-process, shared by the tests that only read it."""
    from attnscope.engine.config import load_config
    from attnscope.engine.train import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(load_config(None, tiny_settings(run_dir, epochs=3)))
    return run_dir
