"""A Perceiver over a cell's expressed genes with masked-expression pretraining (Exceiver).

Exceiver (Connell et al. 2022): a cell is the set of its expressed genes, each an embedding
of the gene id plus one of its expression value. A fixed number of learned latents
cross-attend to that set, so the cost grows linearly with the number of genes rather than
quadratically as in BERT, and self-attention runs only among the latents. Pretraining hides
a share of the expressed genes from the encoder and asks a decoder to predict their counts
from gene-id queries alone; genes the cell does not express are queried too (target 0), so
the model learns what is absent as well as how much of what is present.

Token ids: 0 padding, 1 reserved for a mask token (unused here: hidden genes are left out,
not replaced), genes from 2. Values are log1p(count x 1e4 / library); counts are raw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sclabel.config import _JSONConfig
from sclabel.errors import InputError
from sclabel.foundation.objectives import (
    FIRST_GENE,
    negative_binomial_nll,
    poisson_nll,
)
from sclabel.io.atomic import shared_like_umask

ARCHITECTURE = "sclabel-perceiver"
FORMAT_VERSION = 1
OBJECTIVES = ("nb", "poisson", "mse")
TARGET_SUM = 1e4  # the decoder predicts expression per 1e4 counts, scaled by the library


@dataclass(frozen=True)
class PerceiverConfig(_JSONConfig):
    """`unexpressed_per_cell`: unexpressed genes queried per cell; None = as many as the
    cell's masked expressed genes, so absent and present genes weigh alike in the loss."""

    n_tokens: int
    d_model: int = 128
    n_latents: int = 64
    n_heads: int = 4
    n_self_layers: int = 2
    dropout: float = 0.1
    objective: str = "nb"
    mask_fraction: float = 0.15
    unexpressed_per_cell: int | None = None
    max_len: int = 2048

    def __post_init__(self) -> None:
        ints = ["n_tokens", "d_model", "n_latents", "n_heads", "n_self_layers", "max_len"]
        ints += [] if self.unexpressed_per_cell is None else ["unexpressed_per_cell"]
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"PerceiverConfig.{name} must be an integer >= 0, got {value!r}")
        if self.n_tokens <= FIRST_GENE or min(self.d_model, self.n_latents, self.max_len) < 1:
            raise InputError("n_tokens must be > 2 and d_model, n_latents, max_len >= 1")
        if self.n_heads < 1 or self.d_model % self.n_heads:
            raise InputError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0 <= self.dropout < 1 or not 0 < self.mask_fraction < 1:
            raise InputError("dropout must be in [0, 1) and mask_fraction in (0, 1)")


class Block(nn.Module):
    """Pre-LayerNorm attention + MLP, both residual. `cross`: attends to a context (with its
    own LayerNorm) instead of to itself; `mask` (B, Lk) True = a key to attend to."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, cross: bool = False) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model) if cross else None  # no unused weights (DDP)
        self.attention = nn.MultiheadAttention(d_model, n_heads, dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(d_model)
        hidden = 4 * d_model
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, context=None, mask=None):
        q = self.norm_q(x)
        kv = q if self.norm_kv is None else self.norm_kv(context)
        ignore = None if mask is None else ~mask
        mixed = self.attention(q, kv, kv, key_padding_mask=ignore, need_weights=False)[0]
        x = x + self.drop(mixed)
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class ValueEmbedding(nn.Module):
    """A scalar value -> d_model: value x a learned direction (the linear part) plus a small
    MLP (so the model can bend the scale, e.g. single counts vs high expression)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.direction = nn.Parameter(torch.randn(d_model) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(1, d_model), nn.GELU(), nn.Linear(d_model, d_model))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        v = values.unsqueeze(-1)
        return v * self.direction + self.mlp(v)


class CrossStage(nn.Module):
    """The learned latents and their cross-attention to the genes. A learned `null` input is
    always visible, so a cell whose genes are all hidden (or an empty cell) still has a key
    to attend to (a softmax over nothing is NaN); padding gets exactly zero weight."""

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(config.n_latents, config.d_model) * 0.02)
        self.null = nn.Parameter(torch.randn(1, 1, config.d_model) * 0.02)
        self.block = Block(config.d_model, config.n_heads, config.dropout, cross=True)

    def forward(self, genes: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        b = genes.shape[0]
        context = torch.cat([self.null.expand(b, 1, -1), genes], dim=1)
        mask = torch.cat([pad_mask.new_ones(b, 1), pad_mask.bool()], dim=1)
        return self.block(self.latents.expand(b, -1, -1), context, mask)


class PerceiverEncoder(nn.Module):
    """`encoder(tokens, values, pad_mask) -> latents` (B, n_latents, d_model).

    tokens (B, L) int64 gene tokens (0 padding), values (B, L) log-normalized expression,
    pad_mask (B, L) bool, True = a real gene. Gene order does not matter to the encoder
    (no positions): rank order only decides which genes fit into `max_len` upstream."""

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        self.config = config
        self.gene_embedding = nn.Embedding(config.n_tokens, config.d_model, padding_idx=0)
        self.value_embedding = ValueEmbedding(config.d_model)
        self.cross = CrossStage(config)
        self.self_layers = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.dropout)
            for _ in range(config.n_self_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)

    def input_stage(self) -> nn.Module:
        """Everything before the latent self-attention, as one module (to freeze it)."""
        return nn.ModuleList([self.gene_embedding, self.value_embedding, self.cross])

    def forward(self, tokens, values, pad_mask) -> torch.Tensor:
        genes = self.gene_embedding(tokens) + self.value_embedding(values.to(torch.float32))
        latents = self.cross(genes, pad_mask)
        for block in self.self_layers:
            latents = block(latents)
        return self.norm(latents)

    def embed(self, tokens, values, pad_mask) -> torch.Tensor:
        """The cell embedding (B, d_model): the mean of the latents."""
        return self(tokens, values, pad_mask).mean(dim=1)


class PerceiverForMaskedExpression(nn.Module):
    """Encoder + a decoder whose queries are gene-id embeddings (no values) cross-attending
    to the latents; a linear head gives each queried gene's expression.

    nb/poisson: the head's softplus is the expected count per 1e4, times library / 1e4 the
    expected raw count; nb adds a learned per-token log inverse dispersion (`log_theta`).
    mse: the head is the log-normalized value. The loss is the mean over query genes."""

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = PerceiverEncoder(config)
        self.decoder = Block(config.d_model, config.n_heads, config.dropout, cross=True)
        self.decoder_norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, 1)
        if config.objective == "nb":
            self.log_theta = nn.Parameter(torch.zeros(config.n_tokens))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`batch` as from `make_masked_batch`; returns loss, prediction (per 1e4 for
        nb/poisson, log-normalized for mse), mean (expected counts), theta, latents."""
        latents = self.encoder(batch["tokens"], batch["values"], batch["pad_mask"])
        queries = self.encoder.gene_embedding(batch["query_tokens"])
        decoded = self.decoder_norm(self.decoder(queries, latents))
        raw = self.head(decoded).squeeze(-1)
        keep = batch["query_mask"].bool()
        out = {"latents": latents}
        if self.config.objective == "mse":
            out["prediction"] = raw
            per_gene = (raw - batch["query_values"]) ** 2
        else:
            out["prediction"] = rate = F.softplus(raw)
            out["mean"] = mean = rate * batch["library"][:, None] / TARGET_SUM
            if self.config.objective == "nb":
                out["theta"] = theta = self.log_theta[batch["query_tokens"]].exp()
                per_gene = negative_binomial_nll(batch["query_counts"], mean, theta)
            else:
                per_gene = poisson_nll(batch["query_counts"], mean)
        per_gene = torch.where(keep, per_gene, torch.zeros_like(per_gene))
        out["loss"] = per_gene.sum() / keep.sum().clamp(min=1)
        return out


def save(model: PerceiverForMaskedExpression, folder: str | Path) -> None:
    """`config.json` (architecture, format version, config) + `model.safetensors`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = {"architecture": ARCHITECTURE, "format_version": FORMAT_VERSION}
    info.update(model.config.to_dict())
    (folder / "config.json").write_text(json.dumps(info, indent=1))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    shared_like_umask(folder / "model.safetensors")


def load(folder: str | Path) -> PerceiverForMaskedExpression:
    """A model written by `save`; refuses other formats and weights that do not fit."""
    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise InputError(f"{folder} is not a sclabel Perceiver (config.json + model.safetensors)")
    try:
        info = json.loads(config_path.read_text())
        state = load_file(str(weights_path))
    except (ValueError, SafetensorError) as error:
        raise InputError(f"{folder}: unreadable Perceiver files ({error})") from None
    if not isinstance(info, dict) or info.get("architecture") != ARCHITECTURE:
        raise InputError(f"{folder}/config.json does not describe a {ARCHITECTURE} model")
    if info.get("format_version") != FORMAT_VERSION:
        msg = f"{folder}: Perceiver format version {info.get('format_version')!r} is not "
        raise InputError(msg + f"{FORMAT_VERSION}; upgrade sclabel")
    values = {k: v for k, v in info.items() if k not in ("architecture", "format_version")}
    try:
        config = PerceiverConfig.from_dict(values)
    except TypeError as error:  # a required field is missing
        raise InputError(f"{folder}/config.json: {error}") from None
    model = PerceiverForMaskedExpression(config)
    expected = model.state_dict()
    wrong = sorted(set(state) ^ set(expected))
    wrong += [k for k in state.keys() & expected.keys() if state[k].shape != expected[k].shape]
    if wrong:
        msg = f"{folder}: weights do not match config.json ({len(wrong)} tensors, e.g. {wrong[0]})"
        raise InputError(msg)
    model.load_state_dict(state)
    return model
