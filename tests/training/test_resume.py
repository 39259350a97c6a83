"""A run killed by SIGKILL at an arbitrary moment resumes to the very weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from attnscope.engine.rundir import RunPaths, load_weights, read_metrics_csv
from attnscope.errors import CheckpointError
from attnscope.training import resume, resume_config
from tests.runs import TINY, run_cli

EPOCHS = "4"


@pytest.mark.e2e
def test_resume_after_sigkill_ends_with_the_same_weights(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_cli("train", *TINY, "--epochs", EPOCHS, "--run-dir", str(whole))

    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    process = subprocess.Popen(
        [sys.executable, "-m", "attnscope", "train", *TINY, "--epochs", EPOCHS, "--run-dir", str(killed)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = RunPaths(killed).last_state
    deadline = time.monotonic() + 240
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.15)  # into the next epoch, or wherever the process happens to be
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    finished = len(read_metrics_csv(RunPaths(killed).metrics))
    assert finished < int(EPOCHS)

    saved_config = RunPaths(killed).config.read_text()
    refused = run_cli("train", "--resume", str(killed), "--epochs", "9", check=False)
    assert refused.returncode == 1 and "only --no-progress and --verbose go with it" in refused.stderr
    # the run's own config; --no-progress only hides the bars
    result = run_cli("train", "--resume", str(killed), "--no-progress")
    assert "best epoch" in result.stdout
    assert RunPaths(killed).config.read_text() == saved_config
    shown, as_saved = resume_config(killed, progress=True), resume_config(killed)
    assert (shown.trainer.progress, shown.data.progress) == (True, True)
    assert (as_saved.trainer.progress, as_saved.data.progress) == (False, False)  # TINY trains with --no-progress

    expected, resumed = load_weights(RunPaths(whole).last_weights), load_weights(RunPaths(killed).last_weights)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics_csv(RunPaths(killed).metrics)]
    reference = [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics_csv(RunPaths(whole).metrics)]
    assert history == reference
    assert "resuming" in RunPaths(killed).log.read_text()


@pytest.mark.e2e
def test_resume_of_something_that_is_not_a_run_says_so(tmp_path):
    result = run_cli("train", "--resume", str(tmp_path), check=False)
    assert result.returncode == 1
    assert f"{tmp_path} is not a run directory" in result.stderr and "Traceback" not in result.stderr


def test_the_library_resume_refuses_a_folder_that_is_no_run(tmp_path):
    (tmp_path / "notes.txt").write_text("a user's file")
    with pytest.raises(CheckpointError, match=f"{tmp_path} is not a run directory"):
        resume(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
