"""Pretraining objectives: BERT's masked gene tokens (`mask_tokens`), and the Perceiver's:
which genes are hidden and queried, and their likelihoods (negative binomial, Poisson) for
the masked-expression loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sclabel.foundation.perceiver import PerceiverConfig

FIRST_GENE = 2  # 0 padding, 1 mask
MASK_ID = 1  # <mask>; <pad> is 0
EPS = 1e-8


def mask_tokens(
    tokens: torch.Tensor, present: torch.Tensor, mask_prob: float, n_tokens: int, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: labels are -100 except at masked positions; of those 80% become <mask>,
    10% a random gene token, 10% stay. Every cell gets at least one masked position."""
    chosen = (torch.rand(tokens.shape, generator=generator) < mask_prob) & present
    first = present.float().argmax(1)  # a cell too short to draw any: mask its first gene
    none = ~chosen.any(1)
    chosen[none, first[none]] = True
    labels = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    roll = torch.rand(tokens.shape, generator=generator)
    inputs = tokens.clone()
    inputs[chosen & (roll < 0.8)] = MASK_ID
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = torch.randint(2, n_tokens, (int(swap.sum()),), generator=generator)
    return inputs, labels


def negative_binomial_nll(counts, mean, theta) -> torch.Tensor:
    """-log NB(counts | mean, inverse dispersion theta), elementwise, with the lgamma(y+1)
    term, so it is a true negative log-likelihood (comparable across objectives)."""
    log_theta_mean = torch.log(theta + mean + EPS)
    log_lik = (
        theta * (torch.log(theta + EPS) - log_theta_mean)
        + counts * (torch.log(mean + EPS) - log_theta_mean)
        + torch.lgamma(counts + theta)
        - torch.lgamma(theta)
        - torch.lgamma(counts + 1)
    )
    return -log_lik


def poisson_nll(counts, mean) -> torch.Tensor:
    """-log Poisson(counts | mean), elementwise, with the lgamma(y+1) term."""
    return mean - counts * torch.log(mean + EPS) + torch.lgamma(counts + 1)


def _most(x: torch.Tensor) -> int:
    return int(x.max()) if x.numel() else 0


def _compact(chosen: torch.Tensor, width: int, *columns: torch.Tensor) -> list[torch.Tensor]:
    """Move each row's `chosen` entries to the front (order kept) and cut to `width`:
    returns the new mask then each column, zero where the mask is False."""
    order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :width]
    mask = chosen.gather(1, order)
    return [mask] + [c.gather(1, order).masked_fill(~mask, 0) for c in columns]


def _sample_unexpressed(tokens, pad_mask, n_want, n_tokens, generator) -> torch.Tensor:
    """(B, max n_want) genes each cell does not express, distinct, 0 where a row wants fewer.

    Rejection sampling: draw enough uniform candidates for the sparsest acceptance rate,
    drop the cell's own genes (searchsorted in its sorted tokens) and repeats (keeping the
    first draw), keep the first n_want. The first n distinct accepted i.i.d. draws are a
    uniform n-subset. Rows still short (a cell expressing most of the vocabulary) are drawn
    exactly by scoring the whole vocabulary instead."""
    b, k, n_genes = tokens.shape[0], _most(n_want), n_tokens - FIRST_GENE
    if k == 0:
        return tokens.new_zeros(b, 0)
    accept = (1 - pad_mask.sum(1) / n_genes).clamp(min=1e-6)
    width = int((n_want / accept).max() * 1.2) + 32
    if width < n_genes:
        cand = torch.randint(FIRST_GENE, n_tokens, (b, width), generator=generator)
        own = torch.where(pad_mask, tokens, n_tokens).sort(dim=1).values
        own = torch.cat([own, own.new_full((b, 1), n_tokens)], dim=1)  # searchsorted may hit L
        at = torch.searchsorted(own, cand)
        ok = own.gather(1, at) != cand
        ranked, order = cand.sort(dim=1, stable=True)
        repeat = torch.zeros_like(ok)
        repeat.scatter_(1, order[:, 1:], ranked[:, 1:] == ranked[:, :-1])
        ok &= ~repeat
        ok &= ok.cumsum(1) <= n_want[:, None]
        mask, chosen = _compact(ok, k, cand)
        short = mask.sum(1) < n_want
    else:
        chosen, short = tokens.new_zeros(b, k), torch.ones(b, dtype=torch.bool)
    if short.any():
        rows = short.nonzero().squeeze(1)
        score = torch.rand(rows.numel(), n_tokens, generator=generator)
        score[:, :FIRST_GENE] = 2.0
        score.scatter_(1, torch.where(pad_mask[rows], tokens[rows], 0), 2.0)
        best, picked = score.topk(k, dim=1, largest=False)
        keep = (best < 2.0) & (torch.arange(k) < n_want[rows, None])
        chosen[rows] = torch.where(keep, picked, 0)
    return chosen


def make_masked_batch(
    tokens: torch.Tensor,
    values: torch.Tensor,
    counts: torch.Tensor,
    library: torch.Tensor,
    pad_mask: torch.Tensor,
    config: PerceiverConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Cut each cell to its first `max_len` genes (inputs are in rank order), hide
    `mask_fraction` of those (at least one, at most all but one) from the encoder and query
    them in the decoder, plus genes the cell does not express (count 0).

    Inputs (B, L), CPU tensors (the generator's device). Genes past `max_len` are not
    encoded or queried but still count as expressed, so pass cells untruncated: a caller
    that cut them shorter may have a low-ranked gene queried as unexpressed. Returns
    tokens/values/pad_mask (encoder), query_tokens/query_counts/query_values/query_mask
    (decoder: hidden genes first, then unexpressed ones), library."""
    pad_mask = pad_mask.bool()
    top = [x[:, : config.max_len] for x in (tokens, values, counts, pad_mask)]
    context = top[3]
    n_context = context.sum(1)
    n_hide = (n_context.double() * config.mask_fraction).round().long().clamp(min=1)
    n_hide = torch.minimum(n_hide, (n_context - 1).clamp(min=1)).minimum(n_context)
    score = torch.rand(context.shape, generator=generator).masked_fill(~context, 2.0)
    rank = score.argsort(dim=1).argsort(dim=1)  # a random order of each cell's genes
    hidden = (rank < n_hide[:, None]) & context
    enc_mask, enc_tokens, enc_values = _compact(
        context & ~hidden, _most(n_context - n_hide), *top[:2]
    )
    q_mask, q_tokens, q_values, q_counts = _compact(hidden, _most(n_hide), *top[:3])
    extra = config.unexpressed_per_cell
    n_extra = n_hide if extra is None else torch.full_like(n_hide, extra)
    n_extra = torch.minimum(n_extra, config.n_tokens - FIRST_GENE - pad_mask.sum(1)).clamp(min=0)
    absent = _sample_unexpressed(tokens, pad_mask, n_extra, config.n_tokens, generator)
    absent_mask = absent > 0
    zeros = torch.zeros(absent.shape, dtype=counts.dtype)
    return {
        "tokens": enc_tokens,
        "values": enc_values,
        "pad_mask": enc_mask,
        "query_tokens": torch.cat([q_tokens, absent], dim=1),
        "query_counts": torch.cat([q_counts, zeros], dim=1),
        "query_values": torch.cat([q_values, zeros.to(values.dtype)], dim=1),
        "query_mask": torch.cat([q_mask, absent_mask], dim=1),
        "library": library.to(torch.float32),
    }
