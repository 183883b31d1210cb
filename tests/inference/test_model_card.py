"""Every checkpoint folder carries a model card (README.md, Hugging Face layout) that says
what the model is, its genes, classes, data, preprocessing, metrics and provenance."""

import json

import pytest
from huggingface_hub import ModelCard

import sclabel
from conftest import run, shared_file


def test_a_trained_model_card(saved_model, trained_model):
    card = ModelCard.load(saved_model / "README.md")  # huggingface_hub reads it as a card
    assert card.data.library_name == "sclabel"
    assert {"sclabel", "mlp", "cell-type-annotation"} <= set(card.data.tags)
    assert card.data.license is None  # nothing said about a license that no one gave
    text = card.text
    assert f"predicts `cell_type` ({len(trained_model.classes)} classes)" in text
    assert "200 inputs, Ensembl IDs" in text
    assert all(c in text for c in trained_model.classes)
    n = trained_model.metrics["n_cells"]
    assert f"train: {n['train']:,} cells" in text and "split by `donor`" in text
    assert "log1p(counts / total_counts * target_sum)" in text
    test = trained_model.metrics["test"]
    assert f"| test macro-F1 | {test['macro_f1']:.4f} |" in text
    assert (f"| test ECE | {test['ece']:.4f} |\n| test ECE of a calibrated model, by chance "
            f"alone | {test['ece_by_chance']:.4f} |") in text  # fmt: skip
    version = trained_model.metrics["trained_with"]["sclabel_version"]
    assert f"Trained here with sclabel {version} on " in text
    # the folder is what a model repository holds: config.json + model.safetensors + card
    assert {"config.json", "model.safetensors", "README.md"} <= {
        p.name for p in saved_model.iterdir()
    }


def test_sclabel_info_prints_the_card(saved_model):
    result = run("info", saved_model)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("---\nlibrary_name: sclabel")
    assert "## Provenance" in result.stdout
    short = run("info", saved_model, "--short")
    assert short.stdout.startswith("Model(family='mlp'")


def test_cli_training_names_its_data_file(synthetic, tmp_path):
    synthetic.write_h5ad(tmp_path / "atlas.h5ad")
    result = run("train", tmp_path / "atlas.h5ad", "--label-key", "cell_type", "--model",
                 "linear", "--max-epochs", "2", "--out", tmp_path / "m", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    card = (tmp_path / "m" / "README.md").read_text()
    assert "from `atlas.h5ad`." in card


def test_an_imported_model_card_names_its_source_and_digest(tmp_path):
    ref = "sctab_reference"
    ckpt = shared_file(
        f"{ref}/scTab-checkpoints/scTab/run1/val_f1_macro_epoch=39_val_f1_macro=0.000.ckpt"
    )
    model = sclabel.import_sctab(
        ckpt,
        genes=shared_file(f"{ref}/minimal/var.parquet"),
        classes=shared_file(f"{ref}/minimal/categorical_lookup/cell_type.parquet"),
    )
    model.save(tmp_path / "m")
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.license == "mit" and "sctab" in card.data.tags
    digest = json.loads((tmp_path / "m" / "metrics.json").read_text())["imported_from"]["sha256"]
    assert f"source file SHA-256: `{digest}`" in card.text
    assert "1500 inputs, Ensembl IDs" in card.text
    assert "over the model's genes" in card.text
    assert "No held-out metrics" in card.text


@pytest.mark.parametrize(
    "name", ["celltypist_models/ref_pbmc_clean_celltypist_model_AIFI_L3_2024-04-19.pkl"]
)
def test_a_celltypist_import_card(name, tmp_path):
    model = sclabel.import_celltypist(shared_file(name))
    model.save(tmp_path / "m")
    text = (tmp_path / "m" / "README.md").read_text()
    assert "Imported from CellTypist: `ref_pbmc_clean" in text
    assert "71 classes" in text and "..." in text.split("## Classes")[1].split("##")[0]
