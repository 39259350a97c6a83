import os
from pathlib import Path

import pytest
import torch

from tests.runs import tiny_settings


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test``: one worker per core) each worker computes on one thread,
    and so do the processes its tests start: two threads per worker would oversubscribe the
    cores, and OpenMP threads that wait for a busy core slow everything down."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The benchmarks' tests run a benchmark at a small scale: all of them are ``slow``."""
    benchmarks = Path(__file__).parent / "benchmarks"
    for item in items:
        if benchmarks in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny run trained in-process, shared by the tests that only read it."""
    from attnscope.engine.config import load_config
    from attnscope.training.train import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(load_config(None, tiny_settings(run_dir, epochs=3)))
    return run_dir
