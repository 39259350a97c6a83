"""The demo: the whole job on built-in data, as one library call (``attnscope demo`` prints its result).

It trains the shipped ``demo`` config (a small attention VGG on generated
dermoscopy-like lesions with masks), evaluates the held-out test split, draws
the attention over test images, writes the HTML report, indexes the training
images for similarity search and shows a few test images beside their most
similar training images. Each step reads the run through one
:class:`~attnscope.engine.run.Run`, so the data are decoded once.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from attnscope.engine.config import RunConfig, load_config
from attnscope.engine.inference import Evaluation, evaluate
from attnscope.engine.run import DataSelection, Run
from attnscope.errors import DataError
from attnscope.explain.overlay import write_run_attention_grid
from attnscope.explain.report import Report, write_report
from attnscope.fileio import MARKER, read_marker, write_marker
from attnscope.retrieval.page import write_search_page
from attnscope.retrieval.service import (
    IndexOptions,
    IndexSummary,
    SearchOptions,
    build_index,
    open_index,
    search_loader,
)
from attnscope.training.train import TrainResult, train

log = logging.getLogger(__name__)

QUERIES = 6
NEIGHBOURS = 8
GRID_IMAGES = 8


@dataclass(frozen=True)
class DemoOptions:
    """Where the demo's run goes (an earlier demo run there is replaced; nothing else ever is), optional
    epochs, and extra ``--set`` settings."""

    out: str | Path = "runs/demo"
    epochs: int | None = None
    settings: tuple[str, ...] = ()
    progress: bool = True


@dataclass
class DemoResult:
    """Everything the demo made, and how long it took."""

    config: RunConfig
    training: TrainResult
    evaluation: Evaluation
    attention_grid: Path
    report: Report
    index: IndexSummary
    similar_page: Path
    seconds: float

    @property
    def run_dir(self) -> Path:
        return self.training.run_dir


def demo_config(options: DemoOptions) -> RunConfig:
    """The shipped ``demo`` config with the options applied."""
    settings = [f"run_dir={options.out}", *options.settings]
    if not options.progress:
        settings += ["trainer.progress=false", "data.progress=false"]
    if options.epochs:
        settings.append(f"trainer.epochs={options.epochs}")
    return load_config("demo", settings)


def run_demo(options: DemoOptions | None = None) -> DemoResult:
    """Train, evaluate, draw, report and index the demo run (``make demo``); see the module docstring.

    Args:
        options: where (default ``runs/demo``; an earlier demo run there is replaced, nothing else is), the
            epochs, settings over the shipped ``demo`` config.

    Returns:
        The run directory, its training, evaluation, report and index, and the seconds it took."""
    options = options or DemoOptions()
    started = time.perf_counter()
    config = demo_config(options)
    run_dir = Path(str(config.run_dir))
    _start_afresh(run_dir)
    log.info(
        "attnscope demo: %s on %s (%s images, %d px), %d epochs",
        config.model.name,
        config.data.source,
        config.data.source_options.get("count"),
        config.data.image_size,
        config.trainer.epochs,
    )
    training = train(config)
    with Run.open(run_dir, progress=options.progress) as run:
        evaluation = evaluate(run)
        grid = write_run_attention_grid(run, run.loader(), GRID_IMAGES, run_dir / "attention.png")
        report = write_report(run, evaluation=evaluation)
        index = build_index(run, IndexOptions(out=run_dir / "index", attention_pooling=True))
        page = _similar_page(run, index.out, run_dir / "similar.html")
    return DemoResult(config, training, evaluation, grid, report, index, page, time.perf_counter() - started)


def _start_afresh(run_dir: Path) -> None:
    """Remove the demo's previous run at ``run_dir``, and only that: a folder the demo made (its marker)."""
    if run_dir.exists() or run_dir.is_symlink():
        marker = read_marker(run_dir) if run_dir.is_dir() and not run_dir.is_symlink() else None
        if marker is None or marker.get("kind") != "run" or not marker.get("demo"):
            raise DataError(
                f"{run_dir} exists and is not a demo run attnscope made (no {MARKER} marker of one); the demo "
                "replaces only its own earlier run: choose another --out (a demo run made before attnscope marked "
                "its folders has no marker: remove it yourself if you want it gone)"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    write_marker(run_dir, "run", demo=True)


def _similar_page(run: Run, index_dir: Path, out: Path) -> Path:
    """The first test images beside their most similar indexed training images, truth shown."""
    index, _ = open_index(index_dir, run=run)
    queries = run.loader(DataSelection(split="test")).head(QUERIES)
    similar = search_loader(index, run, queries, SearchOptions(k=NEIGHBOURS, with_labels=True))
    return write_search_page(index, similar, out, index_dir)
