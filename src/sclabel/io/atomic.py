"""Write files and folders under a temporary name, then rename: a crash leaves no half output."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from sclabel.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`: on success it replaces `path`, on error it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, marker: str, what: str) -> Iterator[Path]:
    """Like `atomic_path` for a folder of outputs, refusing to replace a folder of other files.

    An existing folder is replaced only if it is empty or holds `marker` (i.e. an earlier
    output of the same kind), so a typo in `--out` never deletes a user's data.
    """
    path = check_dir(path, marker=marker, what=what)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        yield tmp


def check_dir(path: str | Path, *, marker: str, what: str) -> Path:
    """Refuse a folder output that `atomic_dir` would refuse: call it before long work, so
    a typo in --out fails at once, not after hours of training."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file; choose a folder name for the {what}")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).exists():
        msg = f"{path} exists and is not a sclabel {what}; choose an empty or new folder"
        raise InputError(msg)
    return path
