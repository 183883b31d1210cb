"""TabNet as scTab uses it: feature transformer (FC + ghost batch norm + GLU, shared and
step-specific blocks with scaled skip connections) and an attentive transformer whose
per-cell feature mask is a 1.5-entmax (sparse, sums to 1 over genes).

Arik & Pfister, "TabNet" (2021); Fischer et al., "Scaling cross-tissue single-cell annotation
models" (scTab). Defaults follow scTab: one decision step, n_d=128, n_a=64, virtual batch 256,
lambda_sparse=1e-5, and its training settings (AdamW lr 0.005, weight decay 0.05, gradient
clipping) via `train_defaults`. Where sclabel departs from scTab, on purpose and measured
(benchmarks/RESULTS.md, "scTab comparison"):

- No batch norm on the input by default (`input_norm="none"`). scTab's input BatchNorm, in
  eval mode, divides each gene by its running standard deviation; a gene no training cell
  expressed has a variance near 0 and is amplified up to ~300x in the cells that do express
  it (mouse bladder: 2,911 such genes, in 77% of test cells), which wrecks those cells'
  predictions. On mouse bladder (seed 0) macro-F1 is 0.682 without it and 0.522 with it;
  zeroing genes without training variance (0.484) or clipping each gene to its training
  range (0.503) did not recover it, so the harm is not only from unseen genes.
  `input_norm="batch"` keeps scTab's layer (imported scTab checkpoints and models saved
  before this option need it and get it). It helps one thing: gene importances read from
  the attention mask find marker genes better on standardized genes (synthetic markers: 4-7
  of the top 10 found, against 1-3 without), so train with it when explanations matter.
- Ghost batch norm splits a batch into near-equal chunks (as scTab does), never a chunk of
  one cell; a training batch of one cell uses the running statistics.
- More optimizer steps per epoch (`steps_per_epoch`): about 100 on small data instead of
  20, up to scTab's batch of 2,048 on large data.
- PyTorch's default initialization, not scTab's xavier gains: those make weights 5-29x
  larger, so AdamW's step is much smaller relative to them, and below ~2,000 steps the
  network barely moves (scTab's own network on a 25k-cell set: macro-F1 0.07 with its
  init, 0.33 with PyTorch's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from entmax import entmax15
from torch import nn

from sclabel.data.loader import X_KEY
from sclabel.errors import InputError
from sclabel.models.base import Capabilities, Classifier, ModelOutput

INPUT_NORMS = ("none", "batch")


@dataclass(frozen=True)
class TabNetParams:
    n_d: int = 128  # width of the decision output per step
    n_a: int = 64  # width of the attention input per step
    n_steps: int = 1
    gamma: float = 1.3  # prior relaxation: how freely a gene can be reused across steps
    n_shared: int = 3
    n_independent: int = 5
    virtual_batch_size: int = 256
    momentum: float = 0.02
    lambda_sparse: float = 1e-5
    # "none": genes as given (default); "batch": scTab's input BatchNorm (module docstring)
    input_norm: str = "none"

    def __post_init__(self) -> None:
        if min(self.n_d, self.n_a, self.n_steps, self.virtual_batch_size) < 1:
            raise InputError("tabnet n_d, n_a, n_steps and virtual_batch_size must be >= 1")
        if self.input_norm not in INPUT_NORMS:
            raise InputError(f"tabnet input_norm must be one of {INPUT_NORMS}")
        if self.n_shared + self.n_independent < 1:
            raise InputError("tabnet needs at least one shared or independent block")


class GhostBatchNorm(nn.Module):
    """Batch norm over virtual batches: regularizes like small batches inside a large one."""

    def __init__(self, width: int, virtual_batch_size: int, momentum: float) -> None:
        super().__init__()
        self.virtual_batch_size = virtual_batch_size
        self.bn = nn.BatchNorm1d(width, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.bn(x)
        if x.shape[0] == 1:  # batch statistics of one cell are undefined: use the running ones
            bn = self.bn
            return nn.functional.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        # near-equal chunks (257 cells: one chunk, not 256 + 1), as scTab splits them
        chunks = x.chunk(max(x.shape[0] // self.virtual_batch_size, 1))
        return torch.cat([self.bn(chunk) for chunk in chunks])


def _glu(fc: nn.Linear, bn: GhostBatchNorm, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.glu(bn(fc(x)), dim=-1)


class FeatureTransformer(nn.Module):
    """Shared then step-specific GLU layers; from the second layer on, x = (x + f(x)) * sqrt(.5).

    The shared fully connected layers live once in the parent and are passed to `forward`, so
    each weight is stored once; every step has its own batch norms.
    """

    def __init__(self, n_in: int, width: int, p: TabNetParams) -> None:
        super().__init__()
        bns = [
            GhostBatchNorm(2 * width, p.virtual_batch_size, p.momentum) for _ in range(p.n_shared)
        ]
        self.shared_bns = nn.ModuleList(bns)
        self.fcs = nn.ModuleList(
            nn.Linear(width if (p.n_shared or i) else n_in, 2 * width, bias=False)
            for i in range(p.n_independent)
        )
        own = [GhostBatchNorm(2 * width, p.virtual_batch_size, p.momentum) for _ in self.fcs]
        self.bns = nn.ModuleList(own)

    def forward(self, x: torch.Tensor, shared: nn.ModuleList) -> torch.Tensor:
        layers = [*zip(shared, self.shared_bns, strict=True), *zip(self.fcs, self.bns, strict=True)]
        x = _glu(*layers[0], x)
        for fc, bn in layers[1:]:
            x = (x + _glu(fc, bn, x)) * math.sqrt(0.5)
        return x


ENTMAX_FULL_SORT_MAX = 1024
ENTMAX_TOP_K = 256


class AttentiveTransformer(nn.Module):
    def __init__(self, n_a: int, n_genes: int, p: TabNetParams) -> None:
        super().__init__()
        self.fc = nn.Linear(n_a, n_genes, bias=False)
        self.bn = GhostBatchNorm(n_genes, p.virtual_batch_size, p.momentum)

        # entmax15 sorts every row; over thousands of genes a partial sort of the top k is
        # 6x faster on 20k genes and still exact (entmax doubles k when the support is larger)
        self.top_k = None if n_genes <= ENTMAX_FULL_SORT_MAX else ENTMAX_TOP_K

    def forward(self, a: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        return entmax15(self.bn(self.fc(a)) * prior, dim=-1, k=self.top_k)


class TabNetClassifier(Classifier):
    Params = TabNetParams
    capabilities = Capabilities(explains=True)  # the attentive transformer's feature mask
    train_defaults = {"lr": 0.005, "weight_decay": 0.05, "grad_clip": 1.0}
    max_batch_size = 2048  # scTab's batch; the automatic size reaches it from 204,800 cells
    # small data: ~100 steps an epoch, not ~20 (issue 21 measured +0.035 macro-F1 on a
    # 25k-cell set with ~7x the steps; the best epoch was nearly always the last)
    steps_per_epoch = 100

    @classmethod
    def upgrade_params(cls, params: dict) -> dict:
        """Models saved before `input_norm` existed were trained with scTab's input norm."""
        return {"input_norm": "batch", **params}

    def __init__(self, n_genes: int, n_classes: int, params: TabNetParams) -> None:
        super().__init__(n_genes, n_classes, params)
        p = params
        width = p.n_d + p.n_a
        # scTab's input norm only when asked for (see the module docstring)
        self.input_bn = nn.BatchNorm1d(n_genes, momentum=0.01) if p.input_norm == "batch" else None
        self.shared = nn.ModuleList(
            nn.Linear(n_genes if i == 0 else width, 2 * width, bias=False)
            for i in range(p.n_shared)
        )
        # step 0 only splits the input into the first attention vector
        self.transformers = nn.ModuleList(
            FeatureTransformer(n_genes, width, p) for _ in range(p.n_steps + 1)
        )
        self.attention = nn.ModuleList(
            AttentiveTransformer(p.n_a, n_genes, p) for _ in range(p.n_steps)
        )
        self.head = nn.Linear(p.n_d, n_classes)
        self.embedding_dim = p.n_d

    def _steps(self, x: torch.Tensor):
        """Yield (mask, decision) per step; masks are cells x genes, each row sums to 1."""
        p = self.params
        if self.input_bn is not None:
            x = self.input_bn(x)
        prior = torch.ones_like(x)
        attended = self.transformers[0](x, self.shared)[:, p.n_d :]
        for step in range(p.n_steps):
            mask = self.attention[step](attended, prior)
            prior = prior * (p.gamma - mask)
            hidden = self.transformers[step + 1](mask * x, self.shared)
            yield mask, torch.relu(hidden[:, : p.n_d])
            attended = hidden[:, p.n_d :]

    def forward(self, batch):
        decision = 0.0
        entropy = 0.0
        for mask, step_out in self._steps(batch[X_KEY]):
            decision = decision + step_out
            entropy = entropy + (-mask * torch.log(mask + 1e-15)).sum(dim=1).mean()
        sparsity = self.params.lambda_sparse * entropy / self.params.n_steps
        return ModelOutput(
            logits=self.head(decision), loss_terms={"sparsity": sparsity}, embedding=decision
        )

    @torch.no_grad()
    def explain_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(importances, logits) from one pass. Importances: each step's mask weighted by that
        step's decision magnitude (as TabNet's explain), normalized to sum to 1 per cell."""
        total = torch.zeros_like(x)
        decision = 0.0
        for mask, step_out in self._steps(x):
            total += mask * step_out.sum(dim=1, keepdim=True)
            decision = decision + step_out
        importance = total / total.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return importance, self.head(decision)
