"""Pretraining that a user can run and trust on a laptop: preset-sized inputs, saved states and
--resume (a killed run continues to the same model), and a folder other tools can read
(Hugging Face's AutoTokenizer, Geneformer's dictionaries as JSON)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

import sclabel
from conftest import run
from sclabel.errors import InputError
from sclabel.foundation import pretrain as pretrain_module
from sclabel.foundation.corpus import tokenize
from sclabel.foundation.pretrain import PretrainConfig, pretrain
from sclabel.foundation.vocabulary import GeneTokenizer
from sclabel.models.foundation import load_tokenizer

SMALL = {"max_len": 32, "batch_size": 8, "warmup_steps": 2, "progress": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cells = sclabel.datasets.synthetic(200, 80, 3, 4, seed=0)
    tokenizer = GeneTokenizer.fit([cells], max_len=32)
    out = tmp_path_factory.mktemp("corpus") / "cells.store"
    return tokenize([cells], out, tokenizer, progress=False)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("arch", ["bert", "perceiver"])
def test_a_killed_pretraining_resumes_to_the_same_model(corpus, tmp_path, monkeypatch, arch):
    config = PretrainConfig(arch=arch, max_steps=8, save_every=3, **SMALL)
    whole = pretrain(corpus, tmp_path / "whole", config)
    assert not (tmp_path / ".whole.pretraining").exists()  # removed once the model is written

    real, calls = pretrain_module.token_batch, []

    def dies_at_step_8(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt  # the user's ^C, or the scheduler's kill
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "token_batch", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, tmp_path / "again", config)
    monkeypatch.setattr(pretrain_module, "token_batch", real)
    state = tmp_path / ".again.pretraining"
    assert json.loads((state / "state.json").read_text())["epoch"] == 6  # the last saved step
    assert not (tmp_path / "again").exists()
    with pytest.raises(InputError, match="interrupted pretraining left its state.*--resume"):
        pretrain(corpus, tmp_path / "again", config)
    with pytest.raises(InputError, match="max_steps differ"):
        pretrain(corpus, tmp_path / "again", PretrainConfig(arch=arch, max_steps=9, **SMALL),
                 resume=True)  # fmt: skip
    resumed = pretrain(corpus, tmp_path / "again", config, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "again")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not state.exists()


def test_presets_choose_an_input_size_for_their_purpose(tmp_path):
    assert PretrainConfig(arch="bert").max_len == 256  # tiny: sized for a CPU
    assert PretrainConfig(arch="bert", preset="geneformer-6L").max_len == 2048
    assert PretrainConfig(arch="perceiver").max_len == 256
    assert PretrainConfig(arch="perceiver", preset="base").max_len == 2048
    assert PretrainConfig(arch="bert", max_len=512).max_len == 512
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hidden_size": 32, "max_position_embeddings": 1024}))
    assert PretrainConfig(arch="bert", config_file=str(config)).max_len == 1024
    assert PretrainConfig(arch="bert").to_dict()["max_len"] == 256  # recorded as resolved
    with pytest.raises(InputError, match="save_every must be >= 0"):
        PretrainConfig(save_every=-1)


def test_the_folder_loads_in_hugging_face_and_carries_geneformer_dictionaries(corpus, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "bert"
    pretrain(corpus, out, PretrainConfig(arch="bert", max_steps=2, **SMALL))
    ours = load_tokenizer(out)
    hf = AutoTokenizer.from_pretrained(out)
    genes = list(ours.genes[:5])
    assert hf(" ".join(genes), add_special_tokens=False)["input_ids"] == list(ours.gene_tokens[:5])
    assert (hf.pad_token_id, hf.mask_token_id) == (0, 1)
    tokens = json.loads((out / "token_dictionary.json").read_text())
    assert tokens["<pad>"] == 0 and tokens["<mask>"] == 1
    assert [tokens[g] for g in ours.genes] == ours.gene_tokens.tolist()
    medians = json.loads((out / "gene_median_dictionary.json").read_text())
    np.testing.assert_array_equal(np.float32([medians[g] for g in ours.genes]), ours.medians)
    # fine-tuning, embedding and Hugging Face read as many genes as pretraining did
    assert json.loads((out / "config.json").read_text())["pretrained_max_len"] == 32
    assert ours.max_len == 32 and hf.model_max_length == 32
    from sclabel.models.foundation import FoundationParams

    assert FoundationParams(from_dir=str(out)).max_len == 32
    # a folder written before the rename (our JSON as tokenizer.json) still loads
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (old / name).unlink()
    (old / "gene_tokenizer.json").rename(old / "tokenizer.json")
    assert load_tokenizer(old).genes == ours.genes


def test_cli_pretrain_names_the_state_and_resumes(corpus, tmp_path):
    args = ["--quiet", "pretrain", corpus.path, "--out", tmp_path / "m", "--max-steps", "4",
            "--max-len", "32", "--batch-size", "8", "--warmup-steps", "1"]  # fmt: skip
    (tmp_path / ".m.pretraining").mkdir()
    result = run(*args)
    assert result.returncode == 2 and "pass --resume" in result.stderr
    assert not (tmp_path / "m").exists()
    result = run(*args, "--resume")  # an empty state folder: nothing to resume, starts at 0
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "gene_tokenizer.json").exists()
    assert not (tmp_path / ".m.pretraining").exists()


def test_a_vocabulary_with_cls_and_eos_wraps_cells_in_hugging_face_too(tmp_path):
    from transformers import AutoTokenizer

    special = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
    genes = GeneTokenizer(("ENSG1", "ENSG2", "ENSG3"), np.ones(3), special=special,
                          token_ids=np.array([4, 5, 6]))  # fmt: skip
    genes.save(tmp_path, share=True)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf("ENSG2 ENSG1")["input_ids"] == [2, 5, 4, 3]
    assert hf("ENSG2 ENSG1", add_special_tokens=False)["input_ids"] == [5, 4]
    assert hf("ENSG9", add_special_tokens=False)["input_ids"] == [0]  # unknown: <pad>
