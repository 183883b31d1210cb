"""The on-disk store: building, reading, block-shuffled batches, training and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import sclabel
from conftest import normalized
from sclabel.errors import InputError
from sclabel.store.build import build_store
from sclabel.store.format import Store
from sclabel.store.loader import StoreRows, _fill_dense

FAST = {"max_epochs": 6, "batch_size": 128, "progress": False}


@pytest.fixture(scope="module")
def cells():
    return sclabel.datasets.synthetic(1500, 200, 4, 8, seed=3)


@pytest.fixture(scope="module")
def store(cells, tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    cells[:500].write_h5ad(folder / "a.h5ad")
    cells[500:].write_h5ad(folder / "b.h5ad")
    return build_store(
        [folder / "a.h5ad", folder / "b.h5ad"],  # read backed, chunk by chunk
        folder / "atlas",
        label_key="cell_type",
        split_by="donor",
        chunk_size=128,
        progress=False,
    )


def test_store_rows_equal_in_memory_normalization(cells, store):
    expected = normalized(cells, store.vocabulary)
    rows = StoreRows(store, np.arange(store.n_cells))
    order = np.random.default_rng(0).permutation(store.n_cells)
    assert abs(rows[order] - expected[order]).max() < 1e-6
    assert store.obs_names().equals(cells.obs_names)
    assert (store.column("cell_type").astype(str).to_numpy() == cells.obs["cell_type"]).all()
    assert [s["n_cells"] for s in store.meta["sources"]] == [500, 1000]


@pytest.mark.parametrize("n_genes", [1, 7, 8, 9, 37, 203])
def test_densify_writes_every_row_whatever_its_alignment(n_genes):
    # rows of odd widths start at every offset from a 32-byte boundary, so the streamed
    # middle, the head and the tail of a row are all exercised; the buffer starts dirty
    csr = sp.random(50, n_genes, density=0.3, format="csr", dtype=np.float32, random_state=1)
    order = np.random.default_rng(0).permutation(50)[:40]
    out = np.full((41, n_genes), np.nan, np.float32)
    _fill_dense(csr.indptr, csr.indices, csr.data, order, out, 3, 40)
    assert np.array_equal(out[3:40], csr[order[3:40]].toarray())
    assert np.isnan(out[:3]).all() and np.isnan(out[40:]).all()  # rows outside lo:hi untouched


def test_recorded_split_keeps_each_donor_in_one_part(store):
    split = store.column("split").astype(str)
    donor = store.column("donor").astype(str)
    assert set(split) == {"train", "val", "test"}
    assert (split.groupby(donor).nunique() == 1).all()


@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_visits_every_cell_once_in_shuffled_blocks(cells, store, workers):
    expected = normalized(cells, store.vocabulary).toarray()
    rows = StoreRows(store, np.arange(store.n_cells), block_size=16, workers=workers)
    ids = np.arange(store.n_cells)
    seen = []
    for batch in rows.batches(ids, batch_size=100, shuffle=True, seed=1, epoch=0):
        index = batch["y"].numpy()
        np.testing.assert_allclose(batch["x"].numpy(), expected[index], atol=1e-6)
        seen.append(index)
    seen = np.concatenate(seen)
    assert np.array_equal(np.sort(seen), ids)
    assert not np.array_equal(seen, ids)
    again = np.concatenate([b["y"].numpy() for b in rows.batches(ids, batch_size=100, epoch=1)])
    assert np.array_equal(again, ids)  # no shuffle: store order


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_reuse_buffers_and_open_iterators_do_not_share_them(cells, store, workers):
    expected = normalized(cells, store.vocabulary).toarray()
    rows = StoreRows(store, np.arange(store.n_cells), block_size=16, buffer_batches=2,
                     workers=workers)  # fmt: skip
    ids = np.arange(store.n_cells)
    for epoch in range(3):  # later epochs read into the first epoch's buffers
        for batch in rows.batches(ids, batch_size=100, shuffle=True, epoch=epoch):
            np.testing.assert_allclose(batch["x"].numpy(), expected[batch["y"]], atol=1e-6)
    assert len(rows._idle) == 1
    first = rows.batches(ids, batch_size=100, shuffle=True, seed=1)
    second = rows.batches(ids, batch_size=100, shuffle=True, seed=2)
    for a, b in zip(first, second, strict=True):  # both open at once, interleaved
        np.testing.assert_allclose(a["x"].numpy(), expected[a["y"]], atol=1e-6)
        np.testing.assert_allclose(b["x"].numpy(), expected[b["y"]], atol=1e-6)
    assert len(rows._idle) == 2


def test_parts_of_a_store_taking_turns_share_one_set_of_buffers(cells, store):
    expected = normalized(cells, store.vocabulary).toarray()
    idle: list = []
    halves = np.array_split(np.arange(store.n_cells), 2)
    train, val = (StoreRows(store, h, block_size=16, workers=2, idle=idle) for h in halves)
    for epoch in range(2):
        for part, ids in ((train, halves[0]), (val, halves[1])):
            for batch in part.batches(ids, batch_size=100, shuffle=True, epoch=epoch):
                np.testing.assert_allclose(batch["x"].numpy(), expected[batch["y"]], atol=1e-6)
    assert len(idle) == 1  # one ring and one set of read buffers served both parts
    other = StoreRows(store, halves[0], workers=2, densify_threads=1, idle=idle)
    list(other.batches(batch_size=100))
    assert len(idle) == 2  # another thread layout does not take the shared set


def test_threads_give_the_same_batches_as_inline_reading(store):
    ids = np.arange(store.n_cells)
    runs = []
    for workers in (0, 3):
        rows = StoreRows(store, ids, block_size=8, buffer_batches=2, workers=workers)
        runs.append([b["y"].numpy().copy() for b in rows.batches(ids, batch_size=64, shuffle=True)])
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_shards_with_equal_step_counts(store, world_size):
    ids = np.arange(store.n_cells)
    rows = StoreRows(store, ids, block_size=32, workers=0)
    shards = [
        [b["y"].numpy() for b in rows.batches(ids, batch_size=64, shuffle=True, rank=r,
                                              world_size=world_size)]
        for r in range(world_size)
    ]  # fmt: skip
    assert len({len(s) for s in shards}) == 1
    cells = np.concatenate([np.concatenate(s) for s in shards])
    assert np.array_equal(np.sort(cells), ids)


@pytest.mark.slow
def test_training_from_store_matches_training_in_memory(cells, store):
    options = {"label_key": "cell_type", "split_key": "split", "model": "mlp", **FAST}
    adata = cells.copy()
    adata.obs["split"] = store.column("split").astype(str).to_numpy()
    in_memory = sclabel.train(adata, **options)
    # one-cell blocks and one-batch windows: the same cells in every batch as in memory
    exact = sclabel.train(store, loader={"block_size": 1, "buffer_batches": 1}, **options)
    test = adata[adata.obs["split"] == "test"]
    np.testing.assert_allclose(
        exact.predict(test).probabilities, in_memory.predict(test).probabilities, atol=1e-4
    )
    streamed = sclabel.train(store, **options)  # default block shuffle, reader thread
    assert streamed.metrics["n_cells"] == in_memory.metrics["n_cells"]
    scores = [m.metrics["test"]["macro_f1"] for m in (in_memory, streamed)]
    assert scores[0] > 0.9
    assert scores[1] == pytest.approx(scores[0], abs=0.03)


def test_store_trained_model_names_its_split_and_saves(store, tmp_path):
    model = sclabel.train(store, label_key="cell_type", split_by="donor", model="linear", **FAST)
    assert set(model.split["split"]) == {"train", "val", "test"}
    assert model.split.index[0] in set(store.obs_names())
    model.save(tmp_path / "m")
    by_column = sclabel.train(store, label_key="cell_type", split_key="split", model="linear",
                              **FAST)  # fmt: skip
    assert by_column.metrics["split"]["split_key"] == "split"


def test_celltypist_family_is_refused_from_a_store(store):
    with pytest.raises(InputError, match="fitted in memory"):
        sclabel.train(store, label_key="cell_type", model="celltypist")


def test_bad_sources_leave_no_store(cells, tmp_path):
    other = cells[:100].copy()
    del other.obs["donor"]
    with pytest.raises(InputError, match="lacks obs column"):
        build_store([cells[:100].copy(), other], tmp_path / "s", columns=["donor"])
    negative = cells[:100].copy()
    negative.X = negative.X.copy()
    negative.X.data[5] = -1
    with pytest.raises(InputError, match="negative"):
        build_store([cells[:100].copy(), negative], tmp_path / "s", progress=False)
    with pytest.raises(InputError, match="no input"):
        build_store([], tmp_path / "s")
    late = cells[:300].copy()  # the third chunk fails while it is written, on its thread
    late.obs_names = [*late.obs_names[:280], *(f"bad\nname{i}" for i in range(20))]
    with pytest.raises(InputError, match="newlines"):
        build_store([late], tmp_path / "s", chunk_size=128, progress=False)
    assert not (tmp_path / "s").exists()
    assert not list(tmp_path.iterdir())


def test_store_refuses_to_overwrite_other_folders_and_damaged_stores(cells, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a sclabel store"):
        build_store([cells[:50].copy()], tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").exists()
    with pytest.raises(InputError, match="not a sclabel store"):
        Store.open(tmp_path / "mine")
    built = build_store([cells[:50].copy()], tmp_path / "s", progress=False)
    data = built.path / "data.bin"
    data.write_bytes(data.read_bytes()[:-8])
    with pytest.raises(InputError, match="wrong size"):
        Store.open(built.path)


def test_read_ahead_keeps_order_and_raises_a_failed_read_in_its_place():
    from sclabel.store.build import _read_ahead

    assert list(_read_ahead(iter(range(5)))) == [0, 1, 2, 3, 4]

    def chunks():
        yield from (0, 1)
        raise InputError("chunk 2 is damaged")

    seen = []
    with pytest.raises(InputError, match="chunk 2"):
        for item in _read_ahead(chunks()):
            seen.append(item)
    assert seen == [0, 1]
    ahead = _read_ahead(iter(range(100)))
    assert next(ahead) == 0
    ahead.close()  # a consumer that stops early leaves no thread reading


def test_file_chunks_hold_about_a_fixed_number_of_values(monkeypatch, tmp_path):
    """Deep cells come in fewer rows per chunk (big arrays page-fault on every chunk)."""
    import anndata as ad

    from sclabel.io import sources

    monkeypatch.setattr(sources, "CHUNK_VALUES", 2000)
    rng = np.random.default_rng(0)
    depth = np.r_[np.full(400, 100), np.full(600, 10)]  # 100 genes a cell, then 10
    rows = [rng.choice(300, d, replace=False) for d in depth]
    X = sp.csr_matrix(
        (np.ones(depth.sum(), np.float32), np.concatenate(rows), np.r_[0, np.cumsum(depth)]),
        shape=(1000, 300),
    )
    path = tmp_path / "cells.h5ad"
    ad.AnnData(X).write_h5ad(path)
    chunks = list(sources.AnnDataSource(path).iter_chunks(chunk_size=150))
    sizes = [chunk.shape[0] for chunk, _ in chunks]
    assert sizes[:3] == [150, 20, 20]  # a first chunk of chunk_size, then 2,000 / 100 rows
    assert sizes[-1] <= 150 and sizes[-2] == 150  # shallow cells: capped by chunk_size
    assert max(chunk.nnz for chunk, _ in chunks[1:]) <= 2000
    whole = sp.vstack([chunk for chunk, _ in chunks])
    assert (whole != X).nnz == 0
    names = np.concatenate([obs.index for _, obs in chunks])
    assert names.tolist() == [str(i) for i in range(1000)]


@pytest.mark.parametrize("n_genes", [5, 300, 70_000])  # 1, 2 and 3 radix passes
def test_unsorted_rows_with_repeated_genes_are_stored_sorted_and_summed(n_genes, tmp_path):
    import anndata as ad

    from sclabel.store.format import canonical_rows

    rng = np.random.default_rng(n_genes)
    lengths = rng.integers(0, 40, 200)
    lengths[::17] = 0  # empty rows too
    X = sp.csr_matrix(
        (
            rng.integers(1, 5, lengths.sum()).astype(np.float32),  # integers: exact sums
            rng.integers(0, n_genes, lengths.sum()).astype(np.int32),
            np.r_[0, np.cumsum(lengths)],
        ),
        shape=(200, n_genes),
    )
    assert not X.has_canonical_format
    expected = X.copy()
    expected.sum_duplicates()
    got = canonical_rows(X)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    assert canonical_rows(expected) is expected  # already canonical: left as it is
    cells = ad.AnnData(X[np.diff(X.indptr) > 0])  # a store refuses cells without counts
    before = cells.X.copy()
    store = build_store([cells], tmp_path / "s", progress=False, min_gene_coverage=0.0)
    for name in ("indptr", "indices", "data"):  # the caller's matrix is left as it was
        np.testing.assert_array_equal(getattr(cells.X, name), getattr(before, name))
    stored = store.read_rows(np.arange(store.n_cells))
    assert stored.has_canonical_format
    assert (stored != expected[np.diff(X.indptr) > 0]).nnz == 0
