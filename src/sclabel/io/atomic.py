"""Write files and folders under a temporary name, then rename: a crash leaves no half output."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from sclabel.errors import InputError

log = logging.getLogger("sclabel")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`: on success it replaces `path`, on error it goes.

    The temporary name carries this process's pid, so what a killed run left behind is
    recognised (its pid is gone) and removed by the next write of the same path. An error
    writing the temporary file names `path`, the name the user gave, not the temporary one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}") from err
    remove_leftovers(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        shared_like_umask(tmp)
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except OSError as err:
        if {err.filename, getattr(err, "filename2", None)} & {str(tmp), str(path)}:
            what = "it is a folder" if isinstance(err, IsADirectoryError) else err.strerror
            raise InputError(f"cannot write {path}: {what or err}") from err
        raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def shared_like_umask(path: Path) -> None:
    """Give `path` (and a folder's files) the modes the user's umask allows, as any other
    file they write: safetensors writes its files 0600, and a model in a shared lab folder
    then could not be loaded by colleagues. Only read/write bits are added, none removed."""
    mask = os.umask(0)
    os.umask(mask)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        mode = file.stat().st_mode & 0o777
        wanted = mode | (0o666 & ~mask)
        if wanted != mode:
            file.chmod(wanted)
    if path.is_dir():  # mkdtemp-style folders are 0700 too
        for folder in [path, *(p for p in path.rglob("*") if p.is_dir())]:
            mode = folder.stat().st_mode & 0o777
            if (wanted := mode | (0o777 & ~mask)) != mode:
                folder.chmod(wanted)


_LEFTOVER = re.compile(r"\.(tmp|old)-(\d+)-[0-9a-f]{8}$")


def remove_leftovers(path: Path) -> list[Path]:
    """Remove temporary siblings of `path` (`.NAME.tmp-PID-*`, `.NAME.old-PID-*`) whose
    process is gone: a run killed while writing. Those of a running process stay."""
    removed = []
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.*-*-*"):
        match = _LEFTOVER.search(sibling.name)
        if not match or sibling.name[: match.start()] != f".{path.name}":
            continue
        if pid_alive(int(match.group(2))):
            continue
        if sibling.is_dir():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        log.warning("removed %s, left by a run that was killed (pid %s)", sibling, match.group(2))
        removed.append(sibling)
    return removed


def pid_alive(pid: int) -> bool:
    """Is process `pid` running on this machine?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
