"""The run directory is the tool's own: created new (with a marker), locked while a process trains into it."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from attnscope.engine.config import load_config
from attnscope.engine.rundir import RunLock, RunPaths, prepare_run_dir
from attnscope.errors import ConfigError, DataError
from attnscope.fileio import read_marker, write_marker
from attnscope.training.train import train
from tests.processes import exited_pid
from tests.runs import TINY, tiny_settings


def test_a_user_folder_is_never_trained_into(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "scan.png").write_bytes(b"mine")
    with pytest.raises(DataError, match="is not an empty folder or an attnscope run; .* choose another --run-dir"):
        prepare_run_dir(RunPaths(folder), resume=False)
    assert sorted(p.name for p in folder.iterdir()) == ["scan.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_run_dir(RunPaths(empty), resume=False)
    assert read_marker(empty) == {"kind": "run"}
    prepare_run_dir(RunPaths(empty), resume=False)  # its own folder of a start that failed: fine again


def test_a_live_lock_stops_a_second_process_and_names_the_holder(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        write_marker(run_dir, "run")  # as the first process leaves it before config.yaml is written
        holder = {"pid": sleeper.pid, "host": socket.gethostname(), "started": "2026-11-22T05:00:00"}
        (run_dir / ".lock").write_text(json.dumps(holder))
        with pytest.raises(ConfigError, match=f"is being trained by process {sleeper.pid} on {socket.gethostname()}"):
            train(load_config(None, tiny_settings(run_dir, epochs=1)))
        assert not (run_dir / "config.yaml").exists()
        assert json.loads((run_dir / ".lock").read_text()) == holder  # another's lock is left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stale_lock_of_a_killed_run_is_taken_over_and_released(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_marker(run_dir, "run")
    (run_dir / ".lock").write_text(json.dumps({"pid": exited_pid(), "host": socket.gethostname()}))
    train(load_config(None, tiny_settings(run_dir, epochs=1)))
    assert (run_dir / "config.yaml").is_file() and not (run_dir / ".lock").exists()


def test_a_held_lock_cannot_be_taken_twice_and_is_released_on_an_error(tmp_path):
    with pytest.raises(ConfigError, match="is being trained by process"), RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with RunLock(tmp_path):
            pass
    assert not (tmp_path / ".lock").exists()


@pytest.mark.e2e
def test_two_trainings_into_one_run_directory(tmp_path):
    """Regression: two `train --run-dir R` started together both exited 0 and mixed their files."""
    run_dir = tmp_path / "run"
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "attnscope", "train", *TINY, "--epochs", "6", "--run-dir", str(run_dir)]
    first = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / ".lock").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    assert second.returncode == 1 and "Traceback" not in second.stderr
    # refused while the first holds the lock (or, had it finished first, because the folder holds its run)
    assert f"is being trained by process {first.pid}" in second.stderr or "already holds a run" in second.stderr
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 6  # the first run's epochs alone


def test_the_best_weights_carry_their_threshold_so_a_kill_between_writes_cannot_mismatch(tmp_path, monkeypatch):
    import torch

    from attnscope.engine import rundir

    paths = RunPaths(tmp_path)
    model = torch.nn.Linear(2, 1)
    rundir.save_best(model, paths, {"epoch": 1, "threshold": 0.3, "value": float("nan")}, {"model": "m"})
    assert (
        rundir.read_best(paths) == json.loads(paths.best.read_text()) == {"epoch": 1, "threshold": 0.3, "value": None}
    )

    def killed(*args):
        raise KeyboardInterrupt  # the process dies after the weights were renamed into place, before best.json

    torch.nn.init.constant_(model.weight, 7.0)
    monkeypatch.setattr(rundir, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        rundir.save_best(model, paths, {"epoch": 2, "threshold": 0.7}, {"model": "m"})
    assert json.loads(paths.best.read_text())["epoch"] == 1  # the readable copy is behind
    assert rundir.read_best(paths) == {"epoch": 2, "threshold": 0.7}  # the weights' own record wins
    assert rundir.load_weights(paths.best_weights)["weight"].eq(7.0).all()
    # weights written before records travelled with them: best.json is read
    rundir.save_weights(model, paths.best_weights)
    assert rundir.read_best(paths)["epoch"] == 1


def test_training_sweeps_what_a_killed_session_left_half_written(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    write_marker(run_dir, "run")
    host = socket.gethostname()
    leftovers = [
        run_dir / f".metrics.csv.{host}~{exited_pid()}~a.tmp",
        run_dir / "checkpoints" / f".last.ckpt.{host}~{exited_pid()}~b.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"\0" * 4096)
    train(load_config(None, tiny_settings(run_dir, epochs=1)))
    assert not any(path.exists() for path in leftovers)
    assert not [p for p in run_dir.rglob("*.tmp")]
