"""sclabel.data.sampling.class_weights and sclabel.data.loader.iterate_batches."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sclabel.data.loader import X_KEY, Y_KEY, iterate_batches, n_batches
from sclabel.data.sampling import class_weights

# --- class_weights ---------------------------------------------------------------------------


def test_class_weights_by_hand():
    y = np.array([0, 0, 0, 1, 2, 2])
    # n_cells / (n_classes * n_in_class): 6/(3*3), 6/(3*1), 6/(3*2)
    np.testing.assert_allclose(class_weights(y, 3), [2 / 3, 2.0, 1.0], rtol=1e-6)


def test_class_weights_balance_the_classes():
    y = np.array([0] * 90 + [1] * 10)
    w = class_weights(y, 2)
    # each class contributes the same total weight
    assert w[0] * 90 == pytest.approx(w[1] * 10)
    np.testing.assert_allclose(w, [100 / (2 * 90), 100 / (2 * 10)], rtol=1e-6)


def test_class_weights_absent_class_gets_zero():
    y = np.array([0, 0, 2, 2, 2, 2])
    w = class_weights(y, 4)
    assert w.dtype == np.float32
    assert w.shape == (4,)
    assert w[1] == 0 and w[3] == 0
    np.testing.assert_allclose(w[[0, 2]], [6 / (4 * 2), 6 / (4 * 4)], rtol=1e-6)
    assert np.isfinite(w).all()


def test_class_weights_single_class():
    np.testing.assert_allclose(class_weights(np.zeros(5, dtype=np.int64), 1), [1.0])


# --- iterate_batches -------------------------------------------------------------------------


def indexed_matrix(n: int, n_genes: int = 3) -> sp.csr_matrix:
    """Row i holds (i + 1) in column 0, so a batch row tells which cell it is."""
    X = np.zeros((n, n_genes), dtype=np.float32)
    X[:, 0] = np.arange(1, n + 1)
    X[:, 1] = (np.arange(n) % 2).astype(np.float32)
    return sp.csr_matrix(X)


def cell_ids(batches) -> list[int]:
    return [int(v) - 1 for b in batches for v in b[X_KEY][:, 0]]


def test_batches_cover_every_cell_once_in_order():
    X = indexed_matrix(23)
    y = np.arange(23, dtype=np.int64) % 4
    batches = list(iterate_batches(X, y, batch_size=5))
    assert [b[X_KEY].shape[0] for b in batches] == [5, 5, 5, 4, 4]  # nearly equal, at most 5
    assert cell_ids(batches) == list(range(23))
    assert len(batches) == n_batches(23, 5)
    for b in batches:
        ids = b[X_KEY][:, 0].long() - 1
        assert b[X_KEY].dtype == torch.float32
        assert b[Y_KEY].dtype == torch.int64
        assert torch.equal(b[Y_KEY], torch.from_numpy(y)[ids])  # labels stay with their rows
        np.testing.assert_array_equal(b[X_KEY].numpy(), X[ids.numpy()].toarray())


def test_batches_without_labels_have_only_x():
    batches = list(iterate_batches(indexed_matrix(4), batch_size=3))
    assert all(set(b) == {X_KEY} for b in batches)


def test_shuffle_covers_every_cell_once():
    batches = list(iterate_batches(indexed_matrix(50), batch_size=8, shuffle=True, seed=1))
    ids = cell_ids(batches)
    assert sorted(ids) == list(range(50))
    assert ids != list(range(50))


def test_shuffle_is_deterministic_per_seed_and_epoch():
    X = indexed_matrix(60)

    def order(seed, epoch):
        return cell_ids(iterate_batches(X, batch_size=7, shuffle=True, seed=seed, epoch=epoch))

    assert order(3, 0) == order(3, 0)
    assert order(3, 1) == order(3, 1)
    assert order(3, 0) != order(3, 1)  # a new order each epoch
    assert order(3, 0) != order(4, 0)  # and for another seed


@pytest.mark.parametrize("n, world_size", [(11, 2), (12, 2), (10, 3), (1, 2)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_get_disjoint_shards_covering_all_cells_in_equal_steps(n, world_size, shuffle):
    X = indexed_matrix(n)
    y = np.arange(n, dtype=np.int64)
    shards = [
        list(
            iterate_batches(
                X, y, batch_size=2, shuffle=shuffle, seed=9, epoch=2, rank=r, world_size=world_size
            )
        )
        for r in range(world_size)
    ]
    counts = [len(s) for s in shards]
    assert len(set(counts)) == 1  # every rank runs the same number of steps
    assert counts[0] == n_batches(n, 2, world_size)
    ids = [cell_ids(s) for s in shards]
    union = [c for i in ids for c in i]
    assert sorted(set(union)) == list(range(n))  # together the ranks see every cell
    if n >= world_size * counts[0]:
        assert len(union) == n  # and none twice
    else:  # fewer cells than ranks x steps: the one case where a cell repeats
        assert all(len(i) == counts[0] for i in ids)
    for shard in shards:  # labels still match their rows
        for b in shard:
            assert torch.equal(b[Y_KEY], b[X_KEY][:, 0].long() - 1)


def test_ranks_take_contiguous_slices_of_one_permutation():
    X = indexed_matrix(20)
    kwargs = {"batch_size": 4, "shuffle": True, "seed": 5, "epoch": 1, "world_size": 2}
    rank0 = cell_ids(iterate_batches(X, rank=0, **kwargs))
    rank1 = cell_ids(iterate_batches(X, rank=1, **kwargs))
    assert set(rank0).isdisjoint(rank1)
    single = cell_ids(iterate_batches(X, batch_size=20, shuffle=True, seed=5, epoch=1))
    assert rank0 + rank1 == single


@pytest.mark.parametrize(
    "n_cells, batch_size, world_size, expected",
    [(100, 10, 1, 10), (101, 10, 1, 11), (101, 10, 2, 6), (9, 4, 4, 1), (0, 4, 1, 0)],
)
def test_n_batches_by_hand(n_cells, batch_size, world_size, expected):
    assert n_batches(n_cells, batch_size, world_size) == expected
