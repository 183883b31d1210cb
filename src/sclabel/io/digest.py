"""SHA-256 digests: of files (checkpoints, stores, imported models) and of cell names."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def name_digest(names: Iterable[str]) -> str:
    """The SHA-256 of names, one per line (cell names: what identifies an input's rows)."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(str(name).encode())
        digest.update(b"\n")
    return digest.hexdigest()
