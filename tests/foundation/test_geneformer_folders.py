"""Geneformer folders as published: V1 (pytorch_model.bin read with weights_only, vocabulary
pickles read without running code) and V2 (model.safetensors, input size 4,096, <cls>/<eos>
around every cell); folders whose weights do not fit are refused, naming the keys."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import sclabel
from conftest import run
from sclabel.errors import InputError
from sclabel.models.foundation import TINY_BERT

pytestmark = pytest.mark.slow
N_GENES = 60
TUNE = {"max_epochs": 1, "batch_size": 16, "lr": 1e-3, "progress": False}


def _cells():
    return sclabel.datasets.synthetic(160, N_GENES, 2, 2, seed=0)


def _vocabulary(folder, genes, *, v2: bool) -> dict:
    special = {"<pad>": 0, "<mask>": 1} | ({"<cls>": 2, "<eos>": 3} if v2 else {})
    tokens = special | {g: len(special) + i for i, g in enumerate(genes)}
    suffix = "_gc104M" if v2 else ""
    medians = {g: 1.0 + i % 3 for i, g in enumerate(genes)}
    for name, value in (("token_dictionary", tokens), ("gene_median_dictionary", medians)):
        (folder / f"{name}{suffix}.pkl").write_bytes(pickle.dumps(value))
    return tokens


def _folder(tmp_path, name, *, v2: bool, vocab: bool = True):
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path / name
    genes = list(_cells().var_names)
    size = 4096 if v2 else 2048
    config = BertConfig(**{**TINY_BERT, "max_position_embeddings": size},
                        vocab_size=len(genes) + (4 if v2 else 2))  # fmt: skip
    torch.manual_seed(0)
    network = BertForMaskedLM(config)
    if v2:
        network.save_pretrained(folder)  # config.json + model.safetensors
    else:  # V1 as published: config.json + a pickled state dict
        config.save_pretrained(folder)
        torch.save(network.state_dict(), folder / "pytorch_model.bin")
    if vocab:
        _vocabulary(folder, genes, v2=v2)
    return folder


def _encoder_weights(folder):
    from transformers import BertModel

    return BertModel.from_pretrained(folder, add_pooling_layer=False).state_dict()


def test_a_v1_folder_fine_tunes_from_its_pickled_weights(tmp_path):
    folder = _folder(tmp_path, "v1", v2=False)
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    params = {"from_dir": str(folder), "freeze_layers": 2}
    model = sclabel.train(
        _cells(), label_key="cell_type", model="bert", model_params=params, **TUNE
    )
    # every encoder layer frozen: the weights are the folder's, not random ones
    ours, theirs = model.module.encoder.state_dict(), _encoder_weights(folder)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert model.module.params.max_len == 2048  # V1's input size
    assert int(model.module.cells.wrap[0]) == -1  # V1: genes only


def test_a_v2_folder_wraps_cells_in_cls_and_eos_within_its_input_size(tmp_path):
    folder = _folder(tmp_path, "v2", v2=True)
    assert (folder / "model.safetensors").is_file()
    model = sclabel.train(_cells(), label_key="cell_type", model="bert",
                          model_params={"from_dir": str(folder)}, **TUNE)  # fmt: skip
    cells = model.module.cells
    assert model.module.params.max_len == 4096 and cells.wrap.tolist() == [2, 3]
    x = torch.log1p(torch.rand(3, N_GENES) * 5) * (torch.rand(3, N_GENES) > 0.3)
    x[2] = 0
    x[2, :4] = 1.0  # a cell with four genes
    tokens, values, mask = cells(x)
    n = (x > 0).sum(1)
    assert (tokens[:, 0] == 2).all()  # <cls> first
    assert all(int(tokens[i, n[i] + 1]) == 3 for i in range(3))  # <eos> after the genes
    assert mask.sum(1).tolist() == (n + 2).tolist()
    assert (values[:, 0] == 0).all()
    # the input size counts the special tokens: at most max_len - 2 genes
    cells.max_len = 6
    tokens, _, mask = cells(x)
    assert mask.sum(1).max() == 6 and tokens.shape[1] == 6 and (tokens[:, 5][n >= 4] == 3).all()
    cells.max_len = 4096
    # and it saves, loads and predicts with the same tokens
    model.save(tmp_path / "tuned")
    loaded = sclabel.Model.load(tmp_path / "tuned")
    assert loaded.module.cells.wrap.tolist() == [2, 3]
    adata = _cells()
    ours = loaded.predict(adata, progress=False).probabilities
    np.testing.assert_allclose(ours, model.predict(adata, progress=False).probabilities, atol=1e-5)


def test_embed_reads_a_v2_folder_with_its_vocabulary_elsewhere(tmp_path):
    folder = _folder(tmp_path, "v2", v2=True, vocab=False)
    vocab = tmp_path / "geneformer"
    vocab.mkdir()
    _vocabulary(vocab, list(_cells().var_names), v2=True)
    _cells().write_h5ad(tmp_path / "cells.h5ad")
    result = run("embed", tmp_path / "cells.h5ad", "--model", folder, "--tokenizer", vocab,
                 "--out", tmp_path / "emb.npy", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "emb.npy").shape == (160, TINY_BERT["hidden_size"])
    missing = run("embed", tmp_path / "cells.h5ad", "--model", folder,
                  "--out", tmp_path / "emb2.npy", "--quiet")  # fmt: skip
    assert missing.returncode == 2 and "no tokenizer in" in missing.stderr
    assert "--tokenizer" in missing.stderr and not (tmp_path / "emb2.npy").exists()


def test_renamed_weights_are_refused_naming_the_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _folder(tmp_path, "renamed", v2=True)
    state = load_file(folder / "model.safetensors")
    renamed = {k.replace("attention.self", "attn.me"): v for k, v in state.items()}
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    _cells().write_h5ad(tmp_path / "cells.h5ad")
    result = run("train", tmp_path / "cells.h5ad", "--label-key", "cell_type", "--model", "bert",
                 "--from", folder, "--out", tmp_path / "tuned", "--quiet")  # fmt: skip
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "do not fit its config: missing" in error and "attention.self" in error
    assert "unexpected" in error and "attn.me" in error
    assert not (tmp_path / "tuned").exists()


def test_the_pretraining_head_is_reported_not_refused(tmp_path, caplog):
    folder = _folder(tmp_path, "v1", v2=False)
    with caplog.at_level("INFO", logger="sclabel"):
        sclabel.train(_cells(), label_key="cell_type", model="bert",
                      model_params={"from_dir": str(folder)}, **TUNE)  # fmt: skip
    assert "pretraining head ['cls'] is not used" in caplog.text
    assert "the classification head is new" in caplog.text


def test_a_folder_without_its_vocabulary_says_where_to_point(tmp_path):
    folder = _folder(tmp_path, "bare", v2=False, vocab=False)
    with pytest.raises(InputError, match="no tokenizer in .*--tokenizer"):
        sclabel.train(_cells(), label_key="cell_type", model="bert",
                      model_params={"from_dir": str(folder)}, **TUNE)  # fmt: skip
    both = _folder(tmp_path, "both", v2=True)
    _vocabulary(both, ["ENSG1"], v2=False)  # V1 and V2 files side by side: V1's names win
    _vocabulary(both, ["ENSG1"], v2=True)
    (both / "token_dictionary.pkl").unlink()
    (both / "token_dictionary_gc30M.pkl").write_bytes(pickle.dumps({"<pad>": 0}))
    with pytest.raises(InputError, match="several .*keep one set per folder"):
        sclabel.train(_cells(), label_key="cell_type", model="bert",
                      model_params={"from_dir": str(both)}, **TUNE)  # fmt: skip


def test_max_len_beyond_the_input_size_is_refused(tmp_path):
    folder = _folder(tmp_path, "v1", v2=False)
    with pytest.raises(InputError, match="max_len 4096 exceeds the pretrained model's input size"):
        sclabel.train(_cells(), label_key="cell_type", model="bert",
                      model_params={"from_dir": str(folder), "max_len": 4096}, **TUNE)  # fmt: skip
    assert json.loads((folder / "config.json").read_text())["max_position_embeddings"] == 2048
