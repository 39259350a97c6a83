"""DDP with two CPU processes (gloo): each sees half the data, the metrics cover all of it."""

import pytest

from attnscope.engine.inference import predict_loader
from attnscope.engine.metrics import summarize
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.rundir import RunPaths, read_metrics_csv
from tests.runs import TINY, run_cli


@pytest.mark.e2e
def test_ddp_on_two_cpu_processes_reduces_metrics_across_them(tmp_path):
    run_dir = tmp_path / "ddp"
    result = run_cli(
        "train",
        *TINY,
        "--epochs",
        "2",
        "--run-dir",
        str(run_dir),
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
    )
    assert result.stdout.count("run directory:") == 1  # printed by rank 0 only
    history = read_metrics_csv(RunPaths(run_dir).metrics)
    assert len(history) == 2
    last = history[-1]
    # validation has 24 rows: both processes' 12 were gathered before computing
    assert last["val/rows"] == 24 and last["train/rows"] == 112
    run = Run.open(run_dir, "last", progress=False)
    probs, labels, _ = predict_loader(run, run.loader(DataSelection(split="val")))
    whole = summarize(probs, labels, run.kind, run.classes)
    assert last["val/auc"] == pytest.approx(whole["auc"], abs=1e-6)
    assert last["val/accuracy"] == pytest.approx(whole["accuracy"], abs=1e-6)
