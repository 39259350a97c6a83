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
from attnscope.engine.train import TrainResult, train
from attnscope.explain.overlay import write_run_attention_grid
from attnscope.explain.report import Report, write_report
from attnscope.retrieval.page import write_search_page
from attnscope.retrieval.service import IndexOptions, IndexSummary, build_index, open_index, search_loader

log = logging.getLogger(__name__)

QUERIES = 6
NEIGHBOURS = 8
GRID_IMAGES = 8


@dataclass(frozen=True)
class DemoOptions:
    """Where the demo's run goes (replaced if it holds a run), optional epochs, and extra ``--set`` settings."""

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
    """Train, evaluate, draw, report and index the demo run; see the module docstring."""
    options = options or DemoOptions()
    started = time.perf_counter()
    config = demo_config(options)
    run_dir = Path(str(config.run_dir))
    if run_dir.exists() and (run_dir / "config.yaml").exists():
        shutil.rmtree(run_dir)  # the demo's folder is the demo's own: start it afresh
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


def _similar_page(run: Run, index_dir: Path, out: Path) -> Path:
    """The first test images beside their most similar indexed training images, truth shown."""
    index, _ = open_index(index_dir, run=run)
    queries = run.loader(DataSelection(split="test")).head(QUERIES)
    similar = search_loader(index, run, queries, k=NEIGHBOURS, with_labels=True)
    return write_search_page(index, similar, out, index_dir)
