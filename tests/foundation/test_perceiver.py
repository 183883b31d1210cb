"""The Exceiver-style Perceiver: encoder, masking, likelihoods, pretraining, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import shared_file
from sclabel.errors import InputError
from sclabel.foundation import perceiver
from sclabel.foundation.objectives import make_masked_batch, negative_binomial_nll
from sclabel.foundation.perceiver import (
    PerceiverConfig,
    PerceiverEncoder,
    PerceiverForMaskedExpression,
)

TINY = {"d_model": 32, "n_latents": 8, "n_heads": 4, "n_self_layers": 1}


def ranked_cells(lengths, n_tokens, seed=0):
    """Synthetic cells in rank order: distinct gene tokens, counts >= 1 sorted descending."""
    g = torch.Generator().manual_seed(seed)
    b, width = len(lengths), max(max(lengths), 1)
    tokens = torch.zeros(b, width, dtype=torch.long)
    counts = torch.zeros(b, width)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randperm(n_tokens - 2, generator=g)[:n] + 2
        counts[i, :n] = torch.randint(1, 60, (n,), generator=g).float().sort(descending=True)[0]
    library = counts.sum(1) + 10
    values = torch.log1p(counts / library[:, None] * 1e4)
    return tokens, values, counts, library, tokens > 0


def masked(config, lengths=(40, 12, 3, 2, 1, 0), seed=0):
    cells = ranked_cells(lengths, config.n_tokens, seed)
    return make_masked_batch(*cells, config, torch.Generator().manual_seed(seed))


def test_config_round_trips_through_json_and_refuses_bad_values():
    config = PerceiverConfig(n_tokens=100, objective="poisson", unexpressed_per_cell=7)
    again = PerceiverConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    bad = [
        {"d_model": 30},  # not a multiple of n_heads
        {"objective": "zinb"},
        {"mask_fraction": 0.0},
        {"n_tokens": 2},
        {"n_latents": 1.5},
        {"max_len": True},
        {"unexpressed_per_cell": -1},
        {"dropout": 1.0},
    ]
    for change in bad:
        with pytest.raises(InputError):
            PerceiverConfig(**{"n_tokens": 100, **change})
    with pytest.raises(InputError, match="unknown option"):
        PerceiverConfig.from_dict({"n_tokens": 100, "width": 3})


def test_encoder_shapes_and_padding_does_not_change_a_cell():
    config = PerceiverConfig(n_tokens=500, **TINY)
    encoder = PerceiverEncoder(config).eval()
    tokens, values, _, _, mask = ranked_cells([20, 50, 7], config.n_tokens)
    # garbage under the padding: it must be ignored, not merely be zero
    tokens[~mask], values[~mask] = 123, 5.0
    latents = encoder(tokens, values, mask)
    assert latents.shape == (3, config.n_latents, config.d_model)
    embedding = encoder.embed(tokens, values, mask)
    assert embedding.shape == (3, config.d_model)
    torch.testing.assert_close(embedding, latents.mean(1))
    for i, n in enumerate([20, 50, 7]):
        alone = encoder.embed(tokens[i : i + 1, :n], values[i : i + 1, :n], mask[i : i + 1, :n])
        torch.testing.assert_close(alone[0], embedding[i], atol=1e-5, rtol=0)
    # an empty cell (every gene hidden) still encodes to finite numbers
    empty = encoder.embed(tokens[:1, :0], values[:1, :0], mask[:1, :0])
    assert torch.isfinite(empty).all()


def test_masking_hides_expressed_genes_and_queries_unexpressed_ones():
    config = PerceiverConfig(n_tokens=300, max_len=30, mask_fraction=0.2, **TINY)
    lengths = (40, 12, 3, 2, 1, 0)
    tokens, values, counts, library, mask = ranked_cells(lengths, config.n_tokens)
    batch = masked(config, lengths)
    assert batch["tokens"].shape[1] <= config.max_len
    for i, n in enumerate(lengths):
        expressed = tokens[i, :n].tolist()
        context = expressed[: config.max_len]  # the top-ranked genes
        encoded = batch["tokens"][i][batch["pad_mask"][i]].tolist()
        queried = batch["query_tokens"][i][batch["query_mask"][i]]
        q_counts = batch["query_counts"][i][batch["query_mask"][i]]
        q_values = batch["query_values"][i][batch["query_mask"][i]]
        hidden = [t for t in queried.tolist() if t in expressed]
        absent = [t for t in queried.tolist() if t not in expressed]
        n_context = len(context)
        want = 0 if n_context == 0 else max(1, round(0.2 * n_context))
        want = min(want, max(n_context - 1, 1), n_context)
        assert len(hidden) == want, (i, n)
        assert set(hidden).isdisjoint(encoded)  # hidden genes never reach the encoder
        assert sorted(hidden + encoded) == sorted(context)
        positions = [context.index(t) for t in encoded]
        assert positions == sorted(positions)  # rank order kept
        for t, c, v in zip(queried.tolist(), q_counts, q_values, strict=True):
            j = expressed.index(t) if t in expressed else None
            assert float(c) == (0.0 if j is None else float(counts[i, j]))
            assert float(v) == (0.0 if j is None else float(values[i, j]))
        # unexpressed queries: really unexpressed (genes past max_len too), distinct, genes
        assert len(absent) == len(hidden) and len(set(absent)) == len(absent)
        assert all(2 <= t < config.n_tokens for t in absent)
    assert torch.equal(batch["library"], library)
    again, other = masked(config, lengths), masked(config, lengths, seed=1)
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # same seed, same mask
    assert not torch.equal(batch["query_tokens"], other["query_tokens"])


def test_unexpressed_count_option_and_a_nearly_full_vocabulary():
    config = PerceiverConfig(n_tokens=300, unexpressed_per_cell=5, **TINY)
    batch = masked(config, (40, 12, 3))
    n_hidden = [max(1, round(0.15 * n)) for n in (40, 12, 3)]
    assert batch["query_mask"].sum(1).tolist() == [h + 5 for h in n_hidden]
    # 38 genes, a cell expressing 30: at most the 8 others can be queried, and all of them are
    small = PerceiverConfig(n_tokens=40, unexpressed_per_cell=20, **TINY)
    cells = ranked_cells([30, 30], small.n_tokens)
    tokens = cells[0]
    batch = make_masked_batch(*cells, small, torch.Generator().manual_seed(0))
    for i in range(2):
        queried = set(batch["query_tokens"][i][batch["query_mask"][i]].tolist())
        assert queried - set(tokens[i].tolist()) == set(range(2, 40)) - set(tokens[i].tolist())


@pytest.mark.parametrize("per_cell", [10, 30])  # rejection sampling / whole-vocabulary draw
def test_unexpressed_genes_are_drawn_uniformly(per_cell):
    config = PerceiverConfig(n_tokens=102, unexpressed_per_cell=per_cell, **TINY)
    n_cells = 2000
    tokens = torch.arange(2, 52).repeat(n_cells, 1)  # every cell expresses genes 2..51
    counts = torch.ones(tokens.shape)
    cells = (tokens, counts, counts, counts.sum(1), tokens > 0)
    batch = make_masked_batch(*cells, config, torch.Generator().manual_seed(3))
    absent = batch["query_tokens"][batch["query_mask"] & (batch["query_tokens"] >= 52)]
    assert absent.numel() == n_cells * per_cell
    frequency = torch.bincount(absent, minlength=102)[52:].float()
    expected = n_cells * per_cell / 50
    assert (frequency - expected).abs().max() < 5 * (expected * (1 - per_cell / 50)) ** 0.5


def nb_log_likelihood(y, mu, theta):
    """NB(y | mean mu, inverse dispersion theta), written out from its definition."""
    return (
        torch.lgamma(y + theta)
        - torch.lgamma(theta)
        - torch.lgamma(y + 1)
        + theta * torch.log(theta / (theta + mu))
        + y * torch.log(mu / (theta + mu))
    )


def test_negative_binomial_loss_matches_the_likelihood():
    y = torch.tensor([0.0, 1.0, 5.0, 20.0, 0.0, 3.0], dtype=torch.float64)
    mu = torch.tensor([0.5, 2.0, 4.0, 10.0, 1e-3, 0.2], dtype=torch.float64)
    theta = torch.tensor([1.0, 0.5, 10.0, 3.0, 2.0, 100.0], dtype=torch.float64)
    got = negative_binomial_nll(y.float(), mu.float(), theta.float()).double()
    torch.testing.assert_close(got, -nb_log_likelihood(y, mu, theta), rtol=1e-5, atol=1e-5)
    # a hand value: y=0, mu=1, theta=1 -> p = (1/2)^1 -> nll = log 2
    one = negative_binomial_nll(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(1.0))
    assert abs(float(one) - np.log(2)) < 1e-6

    config = PerceiverConfig(n_tokens=300, **TINY)
    model = PerceiverForMaskedExpression(config).eval()
    with torch.no_grad():
        model.log_theta.copy_(torch.linspace(-2, 2, config.n_tokens))
    batch = masked(config)
    out = model(batch)
    keep = batch["query_mask"]
    torch.testing.assert_close(
        out["theta"][keep], model.log_theta[batch["query_tokens"]][keep].exp()
    )
    torch.testing.assert_close(out["mean"], out["prediction"] * batch["library"][:, None] / 1e4)
    expected = -nb_log_likelihood(batch["query_counts"], out["mean"], out["theta"])[keep].mean()
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("objective", ["poisson", "mse"])
def test_poisson_and_mse_objectives(objective):
    config = PerceiverConfig(n_tokens=300, objective=objective, **TINY)
    model = PerceiverForMaskedExpression(config)
    assert not hasattr(model, "log_theta")
    batch = masked(config)
    out = model(batch)
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    keep, y = batch["query_mask"], batch["query_counts"]
    if objective == "poisson":
        mu = out["mean"]
        expected = (mu - y * torch.log(mu) + torch.lgamma(y + 1))[keep].mean()
    else:
        expected = ((out["prediction"] - batch["query_values"]) ** 2)[keep].mean()
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip_and_refusals(tmp_path):
    config = PerceiverConfig(n_tokens=300, **TINY)
    model = PerceiverForMaskedExpression(config).eval()
    folder = tmp_path / "model"
    perceiver.save(model, folder)
    info = json.loads((folder / "config.json").read_text())
    assert info["architecture"] == "sclabel-perceiver" and info["format_version"] == 1
    loaded = perceiver.load(folder).eval()
    assert loaded.config == config
    batch = masked(config)
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    assert all(torch.equal(a[k], b[k]) for k in a)

    def refused(change, match):
        (folder / "config.json").write_text(json.dumps({**info, **change}))
        with pytest.raises(InputError, match=match):
            perceiver.load(folder)

    refused({"d_model": 64}, "do not match")
    refused({"objective": "poisson"}, "do not match")  # nb weights carry log_theta
    refused({"n_tokens": 301}, "do not match")
    refused({"format_version": 2}, "version")
    refused({"architecture": "bert"}, "does not describe")
    del info["n_tokens"]
    refused({}, "n_tokens")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        perceiver.load(folder)
    with pytest.raises(InputError, match="not a sclabel Perceiver"):
        perceiver.load(tmp_path / "missing")


def test_input_stage_freezes_everything_before_the_latent_blocks():
    encoder = PerceiverEncoder(PerceiverConfig(n_tokens=300, **TINY))
    encoder.input_stage().requires_grad_(False)
    assert not encoder.gene_embedding.weight.requires_grad
    assert not encoder.cross.latents.requires_grad
    assert all(p.requires_grad for p in encoder.self_layers.parameters())


def cellbench_ranked():
    """Each CellBench cell as (gene tokens, counts), genes sorted by normalized expression."""
    import anndata as ad
    import scipy.sparse as sp

    adata = ad.read_h5ad(shared_file("cellbench_sc_celllines.h5ad"))
    X = sp.csr_matrix(adata.X)
    cells = []
    for i in range(X.shape[0]):
        genes, count = (
            X.indices[X.indptr[i] : X.indptr[i + 1]],
            X.data[X.indptr[i] : X.indptr[i + 1]],
        )
        normalized = count / count.sum() * 1e4
        order = np.argsort(-normalized, kind="stable")  # ties: lower gene index first
        cells.append((genes[order] + 2, count[order]))
    return cells, X.shape[1] + 2


def padded(cells, rows):
    width = max(len(cells[r][0]) for r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    counts = torch.zeros(len(rows), width)
    for j, r in enumerate(rows):
        tokens[j, : len(cells[r][0])] = torch.from_numpy(cells[r][0].astype(np.int64))
        counts[j, : len(cells[r][1])] = torch.from_numpy(cells[r][1].astype(np.float32))
    library = counts.sum(1)
    return tokens, torch.log1p(counts / library[:, None] * 1e4), counts, library, tokens > 0


@pytest.fixture
def one_thread():
    """A model this small trains faster on one thread, and far faster when other processes
    share the cores (threads waiting on each other at every op: 20x slower, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.realdata
@pytest.mark.slow
def test_masked_pretraining_on_cellbench_lowers_the_loss(one_thread):
    cells, n_tokens = cellbench_ranked()
    assert n_tokens == 11_533 + 2
    config = PerceiverConfig(n_tokens=n_tokens, max_len=256, **{**TINY, "n_latents": 16})
    torch.manual_seed(0)
    model = PerceiverForMaskedExpression(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    losses = []
    for _ in range(200):
        batch = make_masked_batch(*padded(cells, rng.choice(len(cells), 32)), config, generator)
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert np.isfinite(losses).all()
    assert last < 0.8 * first, (first, last)
