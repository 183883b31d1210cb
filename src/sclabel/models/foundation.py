"""Cell classifiers on pretrained foundation models: BERT (Geneformer-style) and Perceiver.

Both take the loader's dense batch of log-normalized expression and rank-tokenize it on the
fly (`rank_select`, the same rule as `sclabel tokenize`), so they train, predict, evaluate
and save through the same machinery as every other family. A family's `bind` runs once
before training: it loads the pretrained weights (`from_dir`) and maps the training genes to
the model's tokens; both end up in the checkpoint, so a saved model needs neither again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sclabel.data.loader import X_KEY
from sclabel.errors import InputError, listing
from sclabel.models.base import Capabilities, Classifier, ModelOutput

log = logging.getLogger("sclabel")

# a BERT small enough to pretrain and fine-tune in a CPU test
TINY_BERT = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "hidden_act": "relu",
    "layer_norm_eps": 1e-12,
    "hidden_dropout_prob": 0.02,
    "attention_probs_dropout_prob": 0.02,
}
POOLINGS = ("mean", "cls")
EVAL_CHUNK = 64  # cells per forward pass without gradients: attention memory is cells x L^2


@contextlib.contextmanager
def quiet_transformers():
    """No load reports or progress bars from transformers: sclabel reports what matters."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def read_model_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        msg = f"{folder} has no config.json: pass a folder from `sclabel pretrain` or Geneformer"
        raise InputError(msg)
    return json.loads(path.read_text())


@dataclass(frozen=True)
class FoundationParams:
    """`from_dir`: a pretrained folder; its architecture is copied into `architecture` when
    training starts, so loading the fine-tuned checkpoint never reads `from_dir` again.
    `tokenizer`: where the gene tokens and medians are, when `from_dir` has none (e.g. the
    Geneformer V1 pickles next to a Geneformer checkpoint)."""

    from_dir: str | None = None
    tokenizer: str | None = None
    architecture: dict = field(default_factory=dict)
    freeze_layers: int = 0
    pooling: str = "mean"
    # default: the length it was pretrained on (config.json's pretrained_max_len, written by
    # `sclabel pretrain`), else its input size (Geneformer V1 2,048, V2 4,096)
    max_len: int | None = None
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not self.architecture and self.from_dir is not None:
            config = read_model_config(self.from_dir)
            object.__setattr__(self, "architecture", config)
        size = self.architecture.get("max_position_embeddings")
        if self.max_len is None:
            trained = self.architecture.get("pretrained_max_len")
            object.__setattr__(self, "max_len", int(trained or size or 2048))
        if self.freeze_layers < 0 or self.max_len < 1:
            raise InputError("freeze_layers must be >= 0 and max_len >= 1")
        if size is not None and self.max_len > int(size):
            msg = f"max_len {self.max_len} exceeds the pretrained model's input size {size}"
            raise InputError(msg)


def load_tokenizer(folder: str | Path):
    """Our tokenizer JSON files, or Geneformer V1's pickles (read by a restricted unpickler)."""
    from sclabel.foundation.vocabulary import GeneTokenizer

    folder = Path(folder)
    if GeneTokenizer.saved_in(folder) is not None:
        return GeneTokenizer.load(folder)
    if any(folder.glob("token_dictionary*.pkl")):
        return GeneTokenizer.from_geneformer(folder)
    msg = (
        f"no tokenizer in {folder}: expected gene_tokenizer.json or Geneformer's vocabulary "
        "(V1 token_dictionary.pkl, V2 token_dictionary_gc104M.pkl, with their median "
        "dictionaries); pass the folder holding them with --tokenizer"
    )
    raise InputError(msg)


def unsafe_weights_message(folder, err: Exception) -> str:
    """What to say when a pickled weights file (pytorch_model.bin) holds more than tensors."""
    first = str(err).strip().split(".")[0] if str(err).strip() else type(err).__name__
    return (
        f"{folder}/pytorch_model.bin is a pickle that would run code, not only tensors "
        f"(torch: {first[:80]}); nothing was run or written. Convert it once, on a machine "
        "where you trust the file, to model.safetensors (transformers: "
        "model.save_pretrained(folder, safe_serialization=True)), or ask its publisher for "
        "the safetensors file"
    )


# a pretraining checkpoint's own heads, which fine-tuning replaces with a new classifier head
UNUSED_HEADS = ("cls.", "pooler.", "classifier.")


def check_loaded(folder, info: dict) -> None:
    """Refuse pretrained weights that do not fit the encoder: transformers fills every
    missing weight with random values and only logs it, so a folder with renamed keys would
    fine-tune from scratch without a word. Unused pretraining heads are only reported."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = [str(m[0]) for m in info.get("mismatched_keys") or []]
    if missing or mismatched:

        def some(keys):
            return f"{len(keys)} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"

        msg = (
            f"the weights in {folder} do not fit its config: missing {some(missing)}, "
            f"unexpected {some(unexpected)}"
            + (f", wrong shape {some(mismatched)}" if mismatched else "")
            + "; is it a BERT checkpoint saved by transformers (or Geneformer) unchanged?"
        )
        raise InputError(msg)
    heads = sorted({k.split(".")[0] for k in unexpected if k.startswith(UNUSED_HEADS)})
    others = [k for k in unexpected if not k.startswith(UNUSED_HEADS)]
    if others:
        msg = f"{folder} holds weights the encoder has no place for: {listing(others, 5)}"
        raise InputError(msg)
    log.info(
        "pretrained encoder loaded from %s%s; the classification head is new", folder,
        f" (its pretraining head {heads} is not used)" if heads else "",
    )  # fmt: skip


class TokenizedCells(nn.Module):
    """Training genes -> token ids and medians, as buffers saved with the checkpoint."""

    def __init__(self, n_genes: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.register_buffer("gene_token", torch.full((n_genes,), -1, dtype=torch.long))
        self.register_buffer("gene_median", torch.ones(n_genes))
        # (<cls>, <eos>) around every cell (Geneformer V2), or (-1, -1): genes only (V1)
        self.register_buffer("wrap", torch.full((2,), -1, dtype=torch.long))

    def _load_from_state_dict(self, state, prefix, *args, **kwargs):
        state.setdefault(prefix + "wrap", torch.full((2,), -1, dtype=torch.long))  # older saves
        super()._load_from_state_dict(state, prefix, *args, **kwargs)

    def bind(self, gene_ids, tokenizer) -> float:
        """Map the model's genes to the tokenizer's; returns the fraction mapped."""
        token, median = tokenizer.gene_table(pd.DataFrame(index=pd.Index(gene_ids)))
        self.gene_token.copy_(torch.as_tensor(token, dtype=torch.long))
        self.gene_median.copy_(torch.as_tensor(median, dtype=torch.float32))
        if tokenizer.wrap is not None:
            if self.max_len < 3:
                raise InputError("max_len must leave room for <cls>, a gene and <eos> (>= 3)")
            self.wrap.copy_(torch.as_tensor(tokenizer.wrap, dtype=torch.long))
        return float((self.gene_token >= 0).float().mean())

    def forward(self, x: torch.Tensor):
        """(tokens, values, mask). V2: <cls> + the top max_len - 2 genes + <eos>, as
        Geneformer's V2 tokenizer writes a cell (special tokens count in the input size)."""
        from sclabel.foundation.ranking import rank_select

        if int(self.wrap[0]) < 0:
            return rank_select(x, self.gene_token, self.gene_median, self.max_len)
        tokens, values, mask = rank_select(x, self.gene_token, self.gene_median, self.max_len - 2)
        n = mask.sum(1)
        pad = torch.zeros_like(tokens[:, :1])
        tokens = torch.cat([pad + self.wrap[0], tokens, pad], dim=1)
        tokens[torch.arange(len(n)), n + 1] = self.wrap[1]
        values = torch.cat([values[:, :1] * 0, values, values[:, :1] * 0], dim=1)
        mask = torch.arange(tokens.shape[1], device=x.device)[None, :] < (n + 2)[:, None]
        return tokens, values, mask


class FoundationClassifier(Classifier):
    """Shared by the BERT and Perceiver families: tokens -> `encode` -> pooled -> head."""

    Params = FoundationParams
    capabilities = Capabilities(pretrained=True, genes_only=True)
    max_batch_size = 32  # a batch holds cells x max_len token states per layer
    train_defaults = {"lr": 5e-5, "weight_decay": 0.001, "lr_gamma": 1.0, "max_epochs": 10}

    def __init__(self, n_genes: int, n_classes: int, params: FoundationParams) -> None:
        super().__init__(n_genes, n_classes, params)
        self.cells = TokenizedCells(n_genes, params.max_len)
        self.encoder = self.make_encoder(self.architecture())
        # pooled states of a (partly) frozen encoder differ little between cells (std ~0.01
        # per dimension on CellBench): standardizing each dimension lets the head learn at
        # the usual rates; without it a frozen encoder's head stayed at chance for 3 epochs
        self.standardize = nn.BatchNorm1d(self.width, affine=False)
        self.dropout = nn.Dropout(params.dropout)
        self.head = nn.Linear(self.width, n_classes)
        self.embedding_dim = self.width

    def architecture(self) -> dict:
        if not self.params.architecture:
            msg = f"{self.family}: pass from_dir, a folder from `sclabel pretrain` (or Geneformer)"
            raise InputError(msg)
        return self.params.architecture

    def bind(self, vocabulary) -> None:
        """Before training: pretrained weights from `from_dir`, genes mapped to tokens."""
        source = self.params.tokenizer or self.params.from_dir
        self.load_pretrained(self.params.from_dir)
        mapped = self.cells.bind(vocabulary.ids, load_tokenizer(source))
        if mapped == 0:
            raise InputError(f"none of the {len(vocabulary.ids)} genes has a token in {source}")
        self.freeze(self.params.freeze_layers)

    def forward(self, batch):
        x = batch[X_KEY]
        if self.training or x.shape[0] <= EVAL_CHUNK:
            pooled = self.embed(x)
        else:  # without gradients, bound the attention memory
            pooled = torch.cat([self.embed(part) for part in x.split(EVAL_CHUNK)])
        logits = self.head(self.dropout(self.standardize(pooled)))
        return ModelOutput(logits=logits, embedding=pooled)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        tokens, values, mask = self.cells(x)
        return self.encode(tokens, values, mask)


class BertClassifier(FoundationClassifier):
    """Geneformer-style: a Hugging Face BERT over rank-ordered gene tokens."""

    family = "bert"

    def make_encoder(self, architecture: dict) -> nn.Module:
        from transformers import BertConfig, BertModel

        values = {k: v for k, v in architecture.items() if k not in ("architectures",)}
        self.width = int(values["hidden_size"])
        return BertModel(BertConfig(**values), add_pooling_layer=False)

    def load_pretrained(self, folder: str) -> None:
        import pickle

        from transformers import BertModel

        try:
            with quiet_transformers():  # what did not load is checked below, not logged
                pretrained, info = BertModel.from_pretrained(
                    folder, add_pooling_layer=False, output_loading_info=True
                )
        except pickle.UnpicklingError as err:  # torch.load(weights_only=True) refused it
            raise InputError(unsafe_weights_message(folder, err)) from None
        except OSError as err:  # transformers: no weights file, or an unreadable one
            raise InputError(f"cannot load the pretrained weights in {folder}: {err}") from None
        check_loaded(folder, info)
        self.encoder.load_state_dict(pretrained.state_dict())

    def freeze(self, n_layers: int) -> None:
        layers = self.encoder.encoder.layer
        if n_layers > len(layers):
            raise InputError(f"freeze_layers={n_layers} but the model has {len(layers)} layers")
        frozen = [self.encoder.embeddings, *layers[:n_layers]] if n_layers else []
        for module in frozen:
            module.requires_grad_(False)

    @property
    def n_tokens(self) -> int:
        return int(self.encoder.config.vocab_size)

    def gene_states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token, final hidden state) of every gene position of the batch's cells."""
        tokens, _, mask = self.cells(x)
        states = self.encoder(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        return tokens[mask], states[mask]

    def encode(self, tokens, values, mask):
        states = self.encoder(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        if self.params.pooling == "cls":  # the first position: the top-ranked gene in V1
            return states[:, 0]
        genes = mask & (tokens != self.cells.wrap[0]) & (tokens != self.cells.wrap[1])
        weights = genes.unsqueeze(-1).to(states.dtype)  # genes only, not <cls>/<eos> (V2)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1)


class PerceiverClassifier(FoundationClassifier):
    """Exceiver-style: latents cross-attend to the cell's genes and their values."""

    family = "perceiver"

    def make_encoder(self, architecture: dict) -> nn.Module:
        from sclabel.foundation.perceiver import PerceiverConfig, PerceiverEncoder

        config = PerceiverConfig.from_dict(_config_fields(architecture, PerceiverConfig))
        self.width = config.d_model
        return PerceiverEncoder(config)

    def load_pretrained(self, folder: str) -> None:
        from sclabel.foundation import perceiver

        self.encoder.load_state_dict(perceiver.load(folder).encoder.state_dict())

    def freeze(self, n_layers: int) -> None:
        blocks = list(self.encoder.self_layers)
        if n_layers > len(blocks) + 1:
            msg = f"freeze_layers={n_layers} but the model has {len(blocks) + 1} stages"
            raise InputError(msg)
        # stage 1 is the gene/value embedding + cross-attention, then one per latent block
        for module in [self.encoder.input_stage(), *blocks][:n_layers]:
            module.requires_grad_(False)

    @property
    def n_tokens(self) -> int:
        return int(self.encoder.config.n_tokens)

    def gene_states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latents summarize the cell, not its genes: a gene's state is its id embedding."""
        tokens, _, mask = self.cells(x)
        return tokens[mask], self.encoder.gene_embedding(tokens[mask])

    def encode(self, tokens, values, mask):
        return self.encoder.embed(tokens, values, mask)


def _config_fields(values: dict, cls) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}
