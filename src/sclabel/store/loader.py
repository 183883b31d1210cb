"""Training batches streamed from a store: block shuffle, on-the-fly normalization, threads.

Each epoch the part's cells are cut into blocks of `block_size` consecutive cells and the
blocks are shuffled (so reads stay contiguous, as scTab's loader does); a window of
`buffer_batches` batches is read at once and shuffled within. Under DDP each rank takes one
contiguous slice of that order: no cell is seen twice per epoch.

Why threads and not worker processes: a dense batch of 2,048 cells x 20,000 genes is 164 MB,
which a worker process would have to copy through shared memory; file reads and the
normalize-and-densify kernel (numba, `nogil`) release the GIL, so threads run them in
parallel with the training step without that copy.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp
import torch

from sclabel.data.loader import X_KEY, Y_KEY, plan_epoch, torch_csr
from sclabel.data.normalize import log_normalize
from sclabel.store._stream import store_fence, stream_row
from sclabel.store.format import ReadBuffer, Store


@numba.njit(nogil=True, cache=True)
def _fill_dense(indptr, indices, data, order, out, lo, hi):  # pragma: no cover
    """out[i] = row order[i] (already normalized) for i in lo:hi, densified.

    Each row is scattered into a zeroed buffer that stays in cache, streamed out to `out`
    with non-temporal stores (see _stream_store) and the buffer's entries reset. Disjoint
    row ranges may run on several threads at once."""
    stage = np.zeros(out.shape[1], np.float32)
    for i in range(lo, hi):
        r = order[i]
        for k in range(indptr[r], indptr[r + 1]):
            stage[indices[k]] = data[k]
        stream_row(out[i], stage)
        for k in range(indptr[r], indptr[r + 1]):
            stage[indices[k]] = 0.0
    store_fence()


class _Ring:
    """Reused dense batch buffers.

    Allocating a fresh 164 MB batch costs more in page faults than filling it (measured 10x
    slower), so batches are views into these buffers and must be treated as read-only (copy
    a batch to keep or change it). Each batch is filled by `threads` threads, each on its
    own rows."""

    def __init__(self, n_slots: int, rows: int, width: int, threads: int = 1):
        self.rows = rows
        self.buffers = [torch.empty((rows, width)) for _ in range(n_slots)]
        self.slot = 0
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self.threads = threads

    def fill(self, window: sp.csr_matrix, order: np.ndarray) -> torch.Tensor:
        slot, self.slot = self.slot, (self.slot + 1) % len(self.buffers)
        out = self.buffers[slot].numpy()
        bounds = np.linspace(0, order.size, self.threads + 1).astype(np.int64)
        args = (window.indptr, window.indices, window.data, order, out)
        if self.pool is None:
            _fill_dense(*args, 0, order.size)
        else:
            parts = zip(bounds[:-1], bounds[1:], strict=True)
            list(self.pool.map(lambda part: _fill_dense(*args, *part), parts))
        return self.buffers[slot][: order.size]


@dataclass
class _Memory:
    ring: _Ring
    buffers: list[ReadBuffer]
    spec: tuple  # (genes, threaded, prefetch, densify threads, readers) it was made for


class StoreRows:
    """The normalized rows `rows` of a store, used where the in-memory code has a CSR matrix:
    `shape`, `X[index]` (a normalized CSR) and batch iteration (`iterate_batches`)."""

    def __init__(
        self,
        store: Store,
        rows: np.ndarray,
        *,
        block_size: int = 64,
        buffer_batches: int = 8,
        workers: int = 1,
        prefetch: int = 2,
        densify_threads: int = 2,
        idle: list | None = None,
    ):
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        self.block_size = block_size
        self.buffer_batches = buffer_batches
        self.workers = workers
        self.prefetch = prefetch
        self.densify_threads = densify_threads
        self._size_factor = store.size_factor
        # memory of finished iterators, reused by the next; StoreRows that take turns (a
        # store's train, validation and test parts) share one list, so one set serves them
        self._idle: list[_Memory] = [] if idle is None else idle

    def take(self, positions: np.ndarray) -> StoreRows:
        """These rows at `positions` (repeats allowed, e.g. upsampling), with the same
        loader options and shared buffers; a repeated row is read once per window."""
        options = ("block_size", "buffer_batches", "workers", "prefetch", "densify_threads")
        kept = {name: getattr(self, name) for name in options}
        return StoreRows(self.store, self.rows[positions], idle=self._idle, **kept)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.size, int(self.store.meta["n_genes"])

    def __getitem__(self, index) -> sp.csr_matrix:
        rows = self.rows[index]
        return log_normalize(self.store.read_rows(rows), self._size_factor[rows])

    def batches(
        self, y: np.ndarray | None = None, *, sparse: bool = False, **plan: Any
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches as `iterate_batches` yields them; `plan` holds `plan_epoch`'s options."""
        plan = {"shuffle": False, "seed": 0, "epoch": 0, "rank": 0, **plan}
        order = plan_epoch(self.rows.size, block_size=self.block_size, **plan)
        if plan["shuffle"] and self.buffer_batches > 1:  # mix cells across a window's batches
            order = _shuffle_windows(
                order, self.buffer_batches, plan["seed"], plan["epoch"], plan["rank"]
            )
        windows = [
            order[i : i + self.buffer_batches] for i in range(0, len(order), self.buffer_batches)
        ]
        max_rows = max((batch.size for batch in order), default=0)
        threaded = self.workers >= 1 and len(windows) >= 2
        memory = self._take_memory(max_rows, threaded)
        # window i reads into buffer i % n: the threaded path holds `workers + 1` windows
        # pending and one being emitted, and a window's buffer is free once it was emitted
        jobs = [(w, memory.buffers[i % len(memory.buffers)]) for i, w in enumerate(windows)]
        try:
            if threaded:
                yield from _threaded(
                    jobs, self._read_window, y, memory.ring, sparse, self.workers, self.prefetch
                )
            else:
                yield from _emit(map(self._read_window, jobs), y, memory.ring, sparse)
        finally:
            self._idle.append(memory)

    def _take_memory(self, rows: int, threaded: bool) -> _Memory:
        """Batch ring and read buffers, kept from one epoch to the next: allocating ~1 GB
        again page-faults on every first touch, a tenth of a short epoch's time. An iterator
        running while another is still open gets its own."""
        spec = (self.shape[1], threaded, self.prefetch, self.densify_threads, self.workers)
        for memory in list(self._idle):
            if memory.spec == spec and memory.ring.rows >= rows:
                self._idle.remove(memory)
                return memory
        if threaded:  # slots in use at once: the queue, one being filled, one held by the consumer
            ring = _Ring(self.prefetch + 3, rows, self.shape[1], threads=self.densify_threads)
        else:
            ring = _Ring(2, rows, self.shape[1])
        buffers = [ReadBuffer() for _ in range(self.workers + 2 if threaded else 1)]
        return _Memory(ring, buffers, spec)

    def _read_window(self, job: tuple[list[np.ndarray], ReadBuffer]):
        """Read and normalize a window's cells in one pass (numpy's vectorized log1p is ~10x
        numba's); returns (normalized CSR, each batch's rows in it, each batch's positions).
        The CSR lives in the job's buffer until that buffer's next read."""
        positions, buffer = job
        rows = self.rows[np.concatenate(positions)]
        unique, inverse = np.unique(rows, return_inverse=True)
        window, local = self.store.read_runs(unique, into=buffer)
        scale = np.ones(window.shape[0], np.float32)  # rows in gaps between runs: unused
        scale[local] = self._size_factor[unique]
        window = log_normalize(window, scale)
        where = local[inverse]
        bounds = np.cumsum([0] + [p.size for p in positions])
        orders = [where[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return window, orders, positions


def _emit(windows, y, ring: _Ring, sparse) -> Iterator[dict[str, torch.Tensor]]:
    for window, orders, positions in windows:
        for order, cells in zip(orders, positions, strict=True):
            if sparse:
                batch = {X_KEY: torch_csr(window[order])}
            else:
                batch = {X_KEY: ring.fill(window, order)}
            if y is not None:
                batch[Y_KEY] = torch.from_numpy(y[cells])
            yield batch


def _threaded(windows, read, y, ring, sparse, workers, prefetch):
    """Read windows on `workers` threads (in order), densify on one more; yield from a queue."""
    out: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="sclabel-read") as pool:
                pending = [pool.submit(read, w) for w in windows[: workers + 1]]
                next_window = len(pending)

                def results():
                    nonlocal next_window
                    while pending:
                        result = pending.pop(0).result()
                        if next_window < len(windows):
                            pending.append(pool.submit(read, windows[next_window]))
                            next_window += 1
                        yield result

                for batch in _emit(results(), y, ring, sparse):
                    while not stop.is_set():
                        try:
                            out.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        for future in pending:
                            future.cancel()
                        return
            out.put(done)
        except BaseException as err:  # surfaced in the consumer
            out.put(err)

    thread = threading.Thread(target=produce, name="sclabel-loader", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


def _shuffle_windows(plan, buffer_batches, seed, epoch, rank):
    rng = np.random.default_rng([seed, epoch, rank, 1])
    shuffled = []
    for i in range(0, len(plan), buffer_batches):
        group = plan[i : i + buffer_batches]
        cells = rng.permutation(np.concatenate(group))
        shuffled.extend(np.split(cells, np.cumsum([g.size for g in group])[:-1]))
    return shuffled
