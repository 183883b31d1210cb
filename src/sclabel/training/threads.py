"""How many CPU threads torch uses while a model trains.

torch's default (one intra-op thread per core) makes small models CPU-hungry without making
them faster: their matrix products are too small to split well, and on a busy machine the
threads wait for each other (two TabNet epochs on 2 shared cores: 9.7 CPU-s with the default,
0.9 CPU-s with one thread). `benchmarks/threads.py` measures it per family: on a shared
2-core machine one thread was faster for every model tried, up to an 8.3M-parameter mlp
(21 s against 27 s for 3 epochs) and TabNet (15 s against 56 s). So the default is one
thread below LARGE_MODEL parameters, every core above (large models and pretraining, where
attention over thousands of tokens a cell dominates). OMP_NUM_THREADS, when set, and
`threads=` / `--threads` always win.
"""

from __future__ import annotations

import contextlib
import os

import torch

from sclabel.errors import InputError

LARGE_MODEL = 20_000_000  # parameters; see benchmarks/RESULTS.md "Threads"


def given(requested: int | None = None) -> int | None:
    """`requested`, else OMP_NUM_THREADS when it is set, else None."""
    if requested is not None:
        if int(requested) < 1:
            raise InputError(f"threads must be at least 1, got {requested}")
        return int(requested)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else None


def choose(module: torch.nn.Module | None, requested: int | None = None) -> int:
    """Threads for training `module` (None: a model that is large by compute, e.g. BERT
    pretraining over thousands of tokens a cell, gets every core)."""
    if (n := given(requested)) is not None:
        return n
    if module is None:
        return os.cpu_count() or 1
    n_params = sum(p.numel() for p in module.parameters())
    return (os.cpu_count() or 1) if n_params >= LARGE_MODEL else 1


@contextlib.contextmanager
def using(threads: int):
    """torch's intra-op threads set to `threads` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
