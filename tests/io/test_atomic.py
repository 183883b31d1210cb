"""Outputs appear whole or not at all; what a killed run left is found and removed."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from sclabel.errors import InputError
from sclabel.io.atomic import atomic_path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_runs_temporary_files_are_removed_by_the_next_write(tmp_path, caplog):
    out = tmp_path / "store"
    stale = tmp_path / f".store.tmp-{dead_pid()}-0123abcd"
    stale.mkdir()
    (stale / "data.bin").write_bytes(b"half")
    alive = tmp_path / ".store.tmp-1-89abcdef"  # pid 1 runs: another writer's, kept
    alive.mkdir()
    with caplog.at_level(logging.WARNING, logger="sclabel"), atomic_path(out) as tmp:
        tmp.mkdir()
    assert out.is_dir() and not stale.exists() and alive.exists()
    assert "left by a run that was killed" in caplog.text


def test_a_failed_write_leaves_nothing_and_names_the_users_path(tmp_path):
    out = tmp_path / "labels.csv"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("data error")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()  # the user's --out is a folder
    message = r"cannot write .*labels\.csv: it is a folder"
    with pytest.raises(InputError, match=message), atomic_path(out) as tmp:
        tmp.write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"]


def test_a_parent_that_is_a_file_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "out.csv"
    with pytest.raises(InputError, match=r"cannot write .*file/out\.csv"), atomic_path(target):
        pass
