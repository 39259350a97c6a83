import pytest

from attnscope import fileio
from attnscope.fileio import atomic_write


def test_writes_text_and_bytes_and_creates_folders(tmp_path):
    target = atomic_write(tmp_path / "a" / "b.json", '{"x": 1}')
    assert target.read_text() == '{"x": 1}'
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.jsonl"
    target.write_text("old")

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]


def test_new_files_get_the_usual_permissions_and_existing_ones_keep_theirs(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)
        atomic_write(path, "y")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_atomic_directory_replaces_a_folder_whole_or_not_at_all(tmp_path):
    from attnscope.fileio import atomic_directory

    target = tmp_path / "index"
    with atomic_directory(target, "index", replace=True) as folder:
        (folder / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_directory(target, "index", replace=True) as folder:
            (folder / "a.txt").write_text("second")
            raise RuntimeError("half way")
    assert (target / "a.txt").read_text() == "first"
    with atomic_directory(target, "index", replace=True) as folder:
        (folder / "b.txt").write_text("third")
    assert sorted(p.name for p in target.iterdir()) == [
        ".attnscope",
        "b.txt",
    ]  # the old folder's files are gone with it
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no staging or set-aside folder left


def test_cells_a_spreadsheet_would_run_are_neutralised():
    """OWASP's advice on CSV injection: text starting with = + - @ tab or CR gets a leading quote."""
    import csv
    import io

    from attnscope.fileio import csv_text, spreadsheet_safe

    for text in ('=HYPERLINK("http://x")', "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_safe(text) == "'" + text
    for value in ("a=b", "benign", "", -1.5, 3, None):
        assert spreadsheet_safe(value) == value
    text = csv_text(["id", "=class"], [["=1+1", -0.25], ["ok", "@x"]])
    assert list(csv.reader(io.StringIO(text))) == [["id", "'=class"], ["'=1+1", "-0.25"], ["ok", "'@x"]]


def test_temporaries_of_killed_processes_are_swept_and_nothing_else(tmp_path):
    import os
    import socket

    from tests.processes import exited_pid

    host = socket.gethostname()
    dead_file = tmp_path / f".best.json.{host}~{exited_pid()}~x1y2.tmp"
    dead_folder = tmp_path / f".index.{host}~{exited_pid()}~abc.tmp"
    live = tmp_path / f".metrics.csv.{host}~{os.getpid()}~q.tmp"
    other_host = tmp_path / f".best.json.elsewhere~{exited_pid()}~q.tmp"
    users = [tmp_path / "notes.tmp", tmp_path / ".hidden.tmp", tmp_path / f".x.{host}~1~.tmpfile"]
    for path in (dead_file, live, other_host, *users):
        path.write_text("x")
    dead_folder.mkdir()
    (dead_folder / "rows.csv").write_text("x")
    assert sorted(fileio.sweep_temporaries(tmp_path)) == sorted([dead_file, dead_folder])
    assert all(p.exists() for p in (live, other_host, *users))
    # what atomic_write makes while it writes follows the pattern, with this process as owner
    name = fileio.temporary_prefix("best.json") + "abc.tmp"
    assert fileio._TEMPORARY.match(name)["pid"] == str(os.getpid())
