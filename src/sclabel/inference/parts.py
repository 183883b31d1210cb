"""Resumable prediction output: one part file per chunk of cells, joined when all are there.

Each chunk's answers are written as `.OUT.parts/part-NNNNNN.parquet` (atomically), so a run
that is killed keeps what it finished and `resume=True` continues it. Nothing is taken on
trust:

- `meta.json` records the model, the input's fingerprint (cell names, shape, file size and
  modification time), the chunking and a run id; a resume with any of them changed is
  refused, so predictions of two versions of an input never mix;
- a lock file (created exclusively, holding the pid) keeps a second writer out; a lock left
  by a killed process (its pid gone) is detected and taken over on resume;
- every part carries the run id, and the join checks that the parts are all there, each
  with the expected number of cells in the expected order, before OUT appears;
- a run that fails removes its parts; an interrupted one (Ctrl-C, kill) keeps them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sclabel.errors import InputError
from sclabel.io.atomic import pid_alive

log = logging.getLogger("sclabel")
RUN_KEY = b"sclabel_run"


class PartWriter:
    """The part files of one prediction into `out` (see the module docstring)."""

    def __init__(self, out: Path, meta: dict, *, resume: bool) -> None:
        self.out = Path(out)
        self.folder = self.out.with_name(f".{self.out.name}.parts")
        self.meta = meta
        self.resume = resume
        self.run = uuid.uuid4().hex
        self.created = False

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> PartWriter:
        if self.folder.exists():
            self._take_over()
        else:
            try:
                self.folder.mkdir(parents=True)
            except FileExistsError:  # another run created it a moment ago
                msg = f"another sclabel run started writing {self.out} at the same time; try again"
                raise InputError(msg) from None
            self.created = True
            self._lock(exclusive=True)
            self.meta = {**self.meta, "run": self.run}
            _write_json(self.folder / "meta.json", self.meta)
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            return
        if issubclass(kind, Exception):  # failed: its parts would never be valid to resume
            if self._owned():
                shutil.rmtree(self.folder, ignore_errors=True)
            return
        if self._owned():  # interrupted (Ctrl-C): keep the parts, let a resume take over
            (self.folder / "lock").unlink(missing_ok=True)
            log.warning("interrupted: finished parts kept in %s; rerun with --resume", self.folder)

    def _take_over(self) -> None:
        holder = _read_json(self.folder / "lock")
        if holder and _alive(holder):
            msg = (
                f"another sclabel run (pid {holder['pid']} on {holder['host']}) is writing "
                f"{self.out}; wait for it to finish or stop it first"
            )
            raise InputError(msg)
        old = _read_json(self.folder / "meta.json")
        if not self.resume:
            how = "was killed" if holder else "was interrupted"
            msg = (
                f"an earlier prediction into {self.out} {how} and left {self.folder}; pass "
                "--resume to continue it, or delete that folder to start again"
            )
            raise InputError(msg)
        if old is None:
            msg = f"{self.folder} has no readable meta.json; delete that folder to start again"
            raise InputError(msg)
        changed = [k for k in self.meta if old.get(k) != self.meta[k]]
        if changed:
            msg = (
                f"cannot resume: {', '.join(changed)} differ from the interrupted run; "
                f"delete {self.folder} to start again"
            )
            raise InputError(msg)
        self.meta, self.run = old, old["run"]
        (self.folder / "lock").unlink(missing_ok=True)
        self._lock(exclusive=True)

    def _lock(self, *, exclusive: bool) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "run": self.run}
        try:
            fd = os.open(self.folder / "lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            msg = f"another sclabel run started writing {self.out} at the same time; try again"
            raise InputError(msg) from None
        with os.fdopen(fd, "w") as handle:
            json.dump(info, handle)

    def _owned(self) -> bool:
        holder = _read_json(self.folder / "lock")
        return bool(holder) and holder.get("run") == self.run and holder["pid"] == os.getpid()

    # -- parts -------------------------------------------------------------------------

    def path(self, index: int) -> Path:
        return self.folder / f"part-{index:06d}.parquet"

    def done(self, index: int) -> bool:
        return self.path(index).exists()

    def read(self, index: int, columns: list[str]) -> pd.DataFrame:
        """Some columns of a finished part, in one read."""
        return pq.read_table(self.path(index), columns=columns).to_pandas()

    def write(self, index: int, frame: pd.DataFrame) -> None:
        """One chunk's answers (a prediction frame, index "cell"), atomically."""
        if not self._owned():
            msg = (
                f"the parts folder {self.folder} was removed or taken over while predicting "
                f"{self.out}; nothing was written to {self.out}: start again"
            )
            raise InputError(msg)
        table = pa.Table.from_pandas(frame.reset_index(), preserve_index=False)
        table = table.replace_schema_metadata({RUN_KEY: self.run.encode()})
        tmp = self.folder / f".part-{index:06d}.tmp-{os.getpid()}"
        pq.write_table(table, tmp)
        os.replace(tmp, self.path(index))

    def frames(self, starts: range, n_cells: int, names: Iterator[str]) -> Iterator[pd.DataFrame]:
        """Every part, checked (this run, cells in the expected order), as frames."""
        step = starts.step
        for index, start in enumerate(starts):
            path = self.path(index)
            if not path.exists():
                msg = f"part {index} of {len(starts)} is missing from {self.folder}: start again"
                raise InputError(msg)
            table = pq.read_table(path)
            run = (table.schema.metadata or {}).get(RUN_KEY, b"").decode()
            expected = min(step, n_cells - start)
            if run != self.run or table.num_rows != expected:
                msg = (
                    f"{path} does not belong to this prediction ({table.num_rows} cells, "
                    f"expected {expected}); delete {self.folder} and start again"
                )
                raise InputError(msg)
            frame = table.to_pandas().set_index("cell")
            wanted = [next(names) for _ in range(expected)]
            if list(frame.index) != wanted:
                msg = (
                    f"{path} holds other cells than rows {start}-{start + expected - 1} of the "
                    f"input; delete {self.folder} and start again"
                )
                raise InputError(msg)
            yield frame

    def finish(self) -> None:
        shutil.rmtree(self.folder)


def _alive(holder: dict) -> bool:
    """Is the process that holds a lock still running? (For another machine: assume so.)"""
    return holder.get("host") != socket.gethostname() or pid_alive(int(holder["pid"]))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=1))
