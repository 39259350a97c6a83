"""Regressions of the reliability issue, end to end through the CLI: outputs never collide,
nothing outside an image root is read, and bad input is one line."""

import csv
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from attnscope import cli


def save(path, seed=0, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_evaluating_other_data_never_overwrites_the_test_splits_evaluation(trained_run, capsys):
    assert cli.main(["evaluate", str(trained_run), "--no-progress"]) == 0
    test_metrics = (trained_run / "evaluation" / "metrics.json").read_text()
    other = ["--data", "synthetic_lesions", "--data-option", "count=30", "--data-option", "size=32"]
    assert cli.main(["evaluate", str(trained_run), *other, "--data-option", "seed=4", "--no-progress"]) == 0
    assert cli.main(["evaluate", str(trained_run), *other, "--data-option", "seed=5", "--no-progress"]) == 0
    assert (trained_run / "evaluation" / "metrics.json").read_text() == test_metrics
    folders = sorted(p.name for p in trained_run.glob("evaluation-synthetic_lesions-*"))
    assert len(folders) == 2  # one per data: seed 4 and seed 5 are different images
    for folder in folders:
        assert json.loads((trained_run / folder / "metrics.json").read_text())["metrics"]["rows"] == 30
    printed = capsys.readouterr().out
    assert all(folder in printed for folder in folders)


def test_two_images_with_one_name_in_two_folders_are_explained_apart(trained_run, tmp_path):
    first, second = save(tmp_path / "p1" / "scan.png", 1), save(tmp_path / "p2" / "scan.png", 2)
    out = tmp_path / "explained"
    options = ["--method", "gradcam", "--steps", "2", "--no-progress"]
    assert cli.main(["explain", str(trained_run), str(first), str(second), *options, "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["p1_scan.png", "p2_scan.png"]
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["p1_scan.npz", "p2_scan.npz"]
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [(row["id"], row["path"]) for row in rows] == [("p1/scan.png", str(first)), ("p2/scan.png", str(second))]
    # ids that make the same file name get their own, numbered
    third = save(tmp_path / "p1_scan.png", 3)
    again = tmp_path / "again"
    assert (
        cli.main(["explain", str(trained_run), str(first), str(second), str(third), *options, "--out", str(again)]) == 0
    )
    names = sorted(p.name for p in (again / "overlays").iterdir())
    assert names == ["p1_scan-2.png", "p1_scan.png", "p2_scan.png"]


def test_the_same_image_given_twice_is_refused(trained_run, tmp_path, capsys):
    image = save(tmp_path / "a.png")
    assert cli.main(["predict", str(trained_run), str(image), str(tmp_path / "." / "a.png"), "--no-progress"]) == 1
    assert "the same image is given twice" in capsys.readouterr().err


def test_predict_csv_never_reads_outside_its_image_root(trained_run, tmp_path, capsys):
    secret = save(tmp_path / "secret" / "s.jpg")
    save(tmp_path / "images" / "ok.png")
    listing = tmp_path / "images" / "list.csv"
    listing.write_text(f"path\nok.png\n../secret/s.jpg\n{secret}\n")
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(trained_run), "--csv", str(listing), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "2 row(s) name files outside the image root" in err and "line 3:" in err and "line 4:" in err
    assert "Traceback" not in err and not out.exists()
    wider = ["--image-root", str(tmp_path)]
    listing.write_text("path\nimages/ok.png\nsecret/s.jpg\n")
    assert (
        cli.main(["predict", str(trained_run), "--csv", str(listing), *wider, "--out", str(out), "--no-progress"]) == 0
    )
    assert len(list(csv.DictReader(out.open()))) == 2


def test_file_names_with_dollar_signs_are_drawn_as_written(trained_run, tmp_path):
    image = save(tmp_path / "price$\\bogus$.png")
    out = tmp_path / "explained"
    argv = ["explain", str(trained_run), str(image), "--method", "gradcam", "--steps", "2", "--out", str(out)]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert len(list((out / "overlays").iterdir())) == 1


def test_skip_bad_skips_a_strip_that_would_exhaust_memory(trained_run, tmp_path, capsys):
    good = save(tmp_path / "good.png")
    strip = tmp_path / "strip.png"
    Image.new("L", (1, 1_000_000)).save(strip)
    out = tmp_path / "p.csv"
    argv = ["predict", str(trained_run), str(good), str(strip), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 1
    assert "1 x 1000000 pixels is a strip, not an image" in capsys.readouterr().err
    assert cli.main([*argv, "--skip-bad"]) == 0
    assert [row["id"] for row in csv.DictReader(out.open())] == ["good.png"]
    assert "strip.png" in (tmp_path / "p.bad_rows.csv").read_text()


def test_a_number_where_a_path_belongs_is_one_line(trained_run, capsys):
    argv = ["evaluate", str(trained_run), "--data", "folder", "--data-option", "root=2024", "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "root=2024" in err and "quote text, e.g. root='2024'" in err


@pytest.mark.slow
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES])
def test_a_full_disk_anywhere_is_one_line(trained_run, monkeypatch, capsys, code):
    from attnscope.engine import inference

    def full(*args, **kwargs):
        raise OSError(code, "No space left on device" if code != errno.EACCES else "Permission denied", "metrics.json")

    monkeypatch.setattr(inference, "write_json", full)
    assert cli.main(["evaluate", str(trained_run), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attnscope: error: metrics.json: ")
    assert ("free space and run again" in err) == (code != errno.EACCES)


@pytest.mark.e2e
def test_what_a_killed_evaluate_or_explain_left_half_written_is_swept_by_the_next(trained_run, tmp_path):
    import socket

    from tests.processes import exited_pid

    host = socket.gethostname()
    evaluation, explained = trained_run / "evaluation", tmp_path / "explained"
    leftovers = [
        evaluation / f".metrics.json.{host}~{exited_pid()}~k.tmp",
        explained / "overlays" / f".a.png.png.{host}~{exited_pid()}~k.tmp",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    assert cli.main(["evaluate", str(trained_run), "--no-progress"]) == 0
    argv = ["explain", str(trained_run), "--count", "1", "--method", "gradcam", "--steps", "2", "--out", str(explained)]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert not any(path.exists() for path in leftovers)


def test_out_never_replaces_a_runs_own_files_a_users_file_or_a_device(trained_run, tmp_path, capsys):
    image = save(tmp_path / "a.png")
    config = (trained_run / "config.yaml").read_text()
    predict = ["predict", str(trained_run), str(image), "--no-progress", "--out"]
    assert cli.main([*predict, str(trained_run / "config.yaml"), "--force"]) == 1
    assert "config.yaml: belongs to the attnscope run" in capsys.readouterr().err
    assert (trained_run / "config.yaml").read_text() == config
    mine = tmp_path / "mine.csv"
    mine.write_text("patient,notes\n1,keep me\n")
    assert cli.main([*predict, str(mine)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mine.csv: exists and is not a predictions CSV" in err and "--force" in err
    assert mine.read_text() == "patient,notes\n1,keep me\n"
    assert cli.main([*predict, "/dev/null"]) == 1 and os.path.exists("/dev/null")
    assert "is a character device" in capsys.readouterr().err
    assert cli.main([*predict, str(mine), "--force"]) == 0
    assert cli.main([*predict, str(mine)]) == 0  # now it is attnscope's own predictions CSV
    assert [row["id"] for row in csv.DictReader(mine.open())] == ["a.png"]
    notes = tmp_path / "notes.html"
    notes.write_text("<!DOCTYPE html><title>mine</title>")
    assert cli.main(["search", str(tmp_path / "no-index"), str(image), "--html", str(notes)]) == 1
    assert "notes.html: exists and is not a HTML page attnscope wrote" in capsys.readouterr().err


def test_a_runs_output_folder_that_links_to_a_users_folder_is_not_written_through(trained_run, tmp_path, capsys):
    users = tmp_path / "documents"
    users.mkdir()
    (users / "metrics.json").write_text("my own numbers")
    link = trained_run / "evaluation-linked"
    link.symlink_to(users, target_is_directory=True)
    try:
        argv = ["evaluate", str(trained_run), "--out", str(link), "--no-report", "--no-progress"]
        assert cli.main(argv) == 1
        assert "evaluation-linked: is a symbolic link" in capsys.readouterr().err
    finally:
        link.unlink()
    assert (users / "metrics.json").read_text() == "my own numbers"
    argv = ["explain", str(trained_run), "--count", "1", "--method", "gradcam", "--out", str(users), "--no-progress"]
    assert cli.main(argv) == 1
    assert "holds files attnscope did not write (metrics.json)" in capsys.readouterr().err
    assert sorted(p.name for p in users.iterdir()) == ["metrics.json"]


@pytest.mark.e2e
def test_a_fifo_or_a_missing_file_among_the_images_is_a_bad_row_never_opened(trained_run, tmp_path):
    good = save(tmp_path / "good.png")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    listing = tmp_path / "list.csv"
    listing.write_text("path\ngood.png\npipe.png\ngone.png\n")
    out = tmp_path / "p.csv"
    argv = [sys.executable, "-m", "attnscope", "predict", str(trained_run), "--csv", str(listing), "--out", str(out)]
    # in a process of its own, with a time limit: a FIFO that is opened blocks forever
    result = subprocess.run([*argv, "--no-progress"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "pipe.png: is a FIFO (named pipe), not a regular file" in result.stderr
    assert "gone.png: file not found" in result.stderr
    result = subprocess.run([*argv, "--no-progress", "--skip-bad"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [row["id"] for row in csv.DictReader(out.open())] == ["good.png"]
    reasons = {row["id"]: row["reason"] for row in csv.DictReader((tmp_path / "p.bad_rows.csv").open())}
    assert set(reasons) == {"pipe.png", "gone.png"} and "FIFO" in reasons["pipe.png"]
    assert good.exists() and fifo.exists()


def test_skip_bad_leaves_out_rows_outside_the_root_and_repeated_images_instead_of_refusing_all(
    trained_run, tmp_path, capsys
):
    save(tmp_path / "secret" / "s.jpg")
    save(tmp_path / "images" / "ok.png")
    save(tmp_path / "images" / "other.png", 2)
    listing = tmp_path / "images" / "list.csv"
    listing.write_text("path\nok.png\n../secret/s.jpg\nother.png\nok.png\n")
    out = tmp_path / "p.csv"
    argv = ["predict", str(trained_run), "--csv", str(listing), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 1  # without --skip-bad the whole list is refused, naming the row
    assert "1 row(s) name files outside the image root" in capsys.readouterr().err and not out.exists()
    assert cli.main([*argv, "--skip-bad"]) == 0
    assert [row["id"] for row in csv.DictReader(out.open())] == ["ok.png", "other.png"]
    bad = list(csv.DictReader((tmp_path / "p.bad_rows.csv").open()))
    assert [(row["row"], row["id"]) for row in bad] == [("3", "../secret/s.jpg"), ("3", "ok.png")]
    assert "outside the image root" in bad[0]["reason"] and "the same image as" in bad[1]["reason"]
    assert "2 image(s) left out (--skip-bad)" in capsys.readouterr().out
