"""Where an output may be written: new paths and attnscope's own earlier outputs, never a user's file, a
link, a FIFO, a device, or a file of a run."""

import os

import pytest

from attnscope.errors import DataError
from attnscope.fileio import MARKER, csv_text, read_marker, write_marker
from attnscope.htmlpage import document
from attnscope.outputs import (
    BAD_ROWS,
    EVALUATION,
    EXPLANATION,
    NEIGHBOURS,
    PAGE,
    PREDICTIONS,
    check_output_file,
    check_output_folder,
    prepare_output_folder,
)


def predictions_csv(path):
    path.write_text(csv_text(["id", "path", "prob_benign", "prob_malignant", "predicted"], [["a", "a.png", 1, 0, "x"]]))
    return path


def test_a_new_file_and_attnscopes_own_earlier_outputs_may_be_written(tmp_path):
    assert check_output_file(tmp_path / "new.csv", PREDICTIONS) == tmp_path / "new.csv"
    assert check_output_file(predictions_csv(tmp_path / "old.csv"), PREDICTIONS) == tmp_path / "old.csv"
    page = tmp_path / "report.html"
    page.write_text(document("a run", "", "<p>hi</p>"))
    assert check_output_file(page, PAGE) == page
    neighbours = tmp_path / "n.csv"
    neighbours.write_text(csv_text([*NEIGHBOUR_HEADER, "rerank_score"], []))
    assert check_output_file(neighbours, NEIGHBOURS) == neighbours
    bad = tmp_path / "x.bad_rows.csv"
    bad.write_text(csv_text(["source", "row", "id", "reason"], []))
    assert check_output_file(bad, BAD_ROWS) == bad


NEIGHBOUR_HEADER = ["query", "query_path", "rank", "id", "label", "similarity", "path"]


def test_a_users_file_needs_force_and_another_kind_of_output_is_a_users_file(tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text("patient,notes\n1,keep me\n")
    with pytest.raises(DataError, match=r"mine.csv: exists and is not a predictions CSV attnscope wrote.*--force"):
        check_output_file(mine, PREDICTIONS)
    assert check_output_file(mine, PREDICTIONS, force=True) == mine
    # a predictions CSV is not a neighbours CSV, and a page of someone else's is not attnscope's
    with pytest.raises(DataError, match="not a neighbours CSV"):
        check_output_file(predictions_csv(tmp_path / "p.csv"), NEIGHBOURS)
    other = tmp_path / "other.html"
    other.write_text("<!DOCTYPE html><html><head><title>my notes</title></head></html>")
    with pytest.raises(DataError, match="not a HTML page"):
        check_output_file(other, PAGE)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(DataError, match="not a predictions CSV"):
        check_output_file(binary, PREDICTIONS)
    assert mine.read_text() == "patient,notes\n1,keep me\n"


@pytest.mark.parametrize("force", [False, True])
def test_links_folders_fifos_and_devices_are_never_written_over(tmp_path, force):
    target = predictions_csv(tmp_path / "target.csv")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    (tmp_path / "folder.csv").mkdir()
    cases = {
        link: "is a symbolic link",
        fifo: r"is a FIFO \(named pipe\), not a regular file",
        tmp_path / "folder.csv": "is a folder, not a regular file",
        "/dev/null": "is a character device, not a regular file",
    }
    for path, message in cases.items():
        with pytest.raises(DataError, match=message):
            check_output_file(path, PREDICTIONS, force=force)
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "nowhere.csv")
    with pytest.raises(DataError, match="is a symbolic link"):
        check_output_file(dangling, PREDICTIONS, force=force)


def test_inside_a_run_only_its_own_outputs_may_be_written_even_with_force(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_marker(run, "run")
    (run / "config.yaml").write_text("model: {name: attn_vgg_tiny}\n")
    for force in (False, True):
        with pytest.raises(DataError, match=r"config.yaml: belongs to the attnscope run .* not a predictions CSV"):
            check_output_file(run / "config.yaml", PREDICTIONS, force=force)
    with pytest.raises(DataError, match=r"inside the attnscope run .* name it \*\.csv"):
        check_output_file(run / "best.safetensors", PREDICTIONS)
    assert check_output_file(run / "predictions.csv", PREDICTIONS) == run / "predictions.csv"
    assert check_output_file(predictions_csv(run / "predictions.csv"), PREDICTIONS) == run / "predictions.csv"
    assert (run / "config.yaml").read_text() == "model: {name: attn_vgg_tiny}\n"


def test_a_link_inside_a_run_is_not_written_through(tmp_path):
    run, users = tmp_path / "run", tmp_path / "users"
    run.mkdir()
    users.mkdir()
    write_marker(run, "run")
    (run / "exports").symlink_to(users, target_is_directory=True)
    with pytest.raises(DataError, match=r"lies under .*exports, a link inside an attnscope run"):
        check_output_file(run / "exports" / "predictions.csv", PREDICTIONS)
    # a user's own link above a run is their business
    (tmp_path / "runs").symlink_to(tmp_path, target_is_directory=True)
    assert check_output_file(tmp_path / "runs" / "run" / "p.csv", PREDICTIONS) == tmp_path / "runs" / "run" / "p.csv"


def test_an_output_folder_is_new_empty_or_the_same_kinds(tmp_path):
    new = prepare_output_folder(tmp_path / "a" / "evaluation", EVALUATION)
    assert read_marker(new) == {"kind": "evaluation"}
    (new / "metrics.json").write_text("{}")
    assert prepare_output_folder(new, EVALUATION) == new  # its own, again
    empty = tmp_path / "empty"
    empty.mkdir()
    assert read_marker(prepare_output_folder(empty, EXPLANATION)) == {"kind": "explanation"}
    # written before folders were marked: nothing in it but what an evaluation writes
    old = tmp_path / "old"
    old.mkdir()
    for name in ("metrics.json", "roc.png", "pr.png", "confusion.png", "bad_rows.csv"):
        (old / name).write_text("")
    assert prepare_output_folder(old, EVALUATION) == old and (old / MARKER).is_file()


def test_a_users_folder_a_run_a_link_and_a_file_are_not_output_folders(tmp_path):
    users = tmp_path / "documents"
    users.mkdir()
    for name in ("thesis.docx", "a.txt", "b.txt", "c.txt"):
        (users / name).write_text("mine")
    with pytest.raises(DataError, match=r"holds files attnscope did not write \(a.txt, b.txt, c.txt and 1 more\)"):
        check_output_folder(users, EVALUATION)
    assert not (users / MARKER).exists()
    run = tmp_path / "run"
    run.mkdir()
    write_marker(run, "run")
    with pytest.raises(DataError, match="is an attnscope run; .*choose a new folder for the evaluation"):
        check_output_folder(run, EVALUATION)
    explained = prepare_output_folder(tmp_path / "explained", EXPLANATION)
    with pytest.raises(DataError, match="is an attnscope explanation"):
        check_output_folder(explained, EVALUATION)
    (run / "evaluation").symlink_to(users, target_is_directory=True)
    with pytest.raises(DataError, match="evaluation: is a symbolic link"):
        check_output_folder(run / "evaluation", EVALUATION)
    (explained / "overlays").symlink_to(users, target_is_directory=True)
    with pytest.raises(DataError, match="overlays: is a symbolic link"):
        check_output_folder(explained, EXPLANATION)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="exists and is not a folder"):
        check_output_folder(tmp_path / "file", EVALUATION)
