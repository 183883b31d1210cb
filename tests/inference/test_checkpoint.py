import json
import shutil

import numpy as np
import pytest

import sclabel
from sclabel.errors import InputError
from sclabel.inference.checkpoint import FILES, FORMAT_VERSION


@pytest.fixture
def checkpoint_copy(saved_model, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(saved_model, path)
    return path


def test_checkpoint_holds_json_safetensors_and_its_card_only(saved_model):
    # and the validation cells' calibration (temperature, conformal scores)
    expected = [*FILES, "calibration.safetensors", "README.md"]  # README.md: the model card
    assert sorted(p.name for p in saved_model.iterdir()) == sorted(expected)
    config = json.loads((saved_model / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert config["family"] == "mlp"
    assert config["hyperparameters"]["width"] == 256
    assert config["preprocessing"]["training_input"] == "counts"
    assert config["preprocessing"]["target_sum"] == 1e4
    assert json.loads((saved_model / "labels.json").read_text()) == [f"type_{i}" for i in range(4)]
    assert len(json.loads((saved_model / "genes.json").read_text())["ids"]) == 200


def test_save_load_gives_identical_predictions(trained_model, saved_model):
    query = sclabel.datasets.synthetic(300, 200, 4, 6, seed=1, cell_seed=7)
    before = trained_model.predict(query, progress=False)
    loaded = sclabel.Model.load(saved_model)
    after = loaded.predict(query, progress=False)
    np.testing.assert_array_equal(before.probabilities, after.probabilities)
    assert loaded.classes == trained_model.classes
    assert loaded.vocabulary == trained_model.vocabulary
    assert loaded.split.equals(trained_model.split.astype(loaded.split.dtypes.to_dict()))


def test_split_export_round_trips(saved_model, trained_model, tmp_path):
    out = sclabel.Model.load(saved_model).export_split(tmp_path / "split.csv")
    lines = out.read_text().splitlines()
    assert lines[0] == "cell,split,group"
    assert len(lines) == len(trained_model.split) + 1


def test_missing_file_is_named(checkpoint_copy):
    (checkpoint_copy / "labels.json").unlink()
    with pytest.raises(InputError, match=r"incomplete checkpoint.*labels\.json"):
        sclabel.Model.load(checkpoint_copy)


def test_newer_format_is_refused_with_upgrade_hint(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["format_version"] = FORMAT_VERSION + 1
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="newer than this sclabel.*upgrade sclabel"):
        sclabel.Model.load(checkpoint_copy)


def test_tampered_weights_are_detected(checkpoint_copy):
    weights = checkpoint_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum.*modified or damaged"):
        sclabel.Model.load(checkpoint_copy)


def test_inconsistent_config_is_refused(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["hyperparameters"]["width"] = 64  # weights no longer fit
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="inconsistent checkpoint"):
        sclabel.Model.load(checkpoint_copy)


def test_corrupt_json_is_refused(checkpoint_copy):
    (checkpoint_copy / "genes.json").write_text("{not json")
    with pytest.raises(InputError, match=r"corrupt genes\.json"):
        sclabel.Model.load(checkpoint_copy)


def test_missing_directory(tmp_path):
    with pytest.raises(InputError, match="model not found"):
        sclabel.Model.load(tmp_path / "nope")


def test_save_refuses_to_overwrite_a_foreign_folder(trained_model, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a sclabel checkpoint"):
        trained_model.save(folder)
    assert (folder / "precious.txt").read_text() == "keep me"


def test_save_replaces_an_old_checkpoint_atomically(trained_model, checkpoint_copy):
    (checkpoint_copy / "labels.json").write_text("[]")
    trained_model.save(checkpoint_copy)
    assert sclabel.Model.load(checkpoint_copy).classes == trained_model.classes
    leftovers = [p.name for p in checkpoint_copy.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("name", ["labels.json", "genes.json"])
def test_reordered_labels_or_genes_are_caught_by_their_checksum(checkpoint_copy, name):
    """A reversed class list or shuffled genes would make every answer wrong, silently."""
    path = checkpoint_copy / name
    value = json.loads(path.read_text())
    if name == "labels.json":
        value = value[::-1]
    else:
        value["ids"] = value["ids"][1:] + value["ids"][:1]
    path.write_text(json.dumps(value, indent=2) + "\n")
    with pytest.raises(InputError, match=f"{name} does not match the checksum"):
        sclabel.Model.load(checkpoint_copy)


def test_a_checkpoint_without_file_digests_loads_and_gains_them_on_save(checkpoint_copy, tmp_path):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    assert set(config["file_sha256"]) == {"genes.json", "labels.json"}
    del config["file_sha256"]  # as sclabel 0.1 wrote it
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    model = sclabel.Model.load(checkpoint_copy)
    model.save(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert set(again["file_sha256"]) == {"genes.json", "labels.json"}


def test_weight_files_follow_the_users_umask(trained_model, tmp_path):
    """safetensors writes 0600; a model in a shared lab folder must be readable by the lab."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        trained_model.save(tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes
    assert all(mode == 0o644 for mode in modes.values()), modes
