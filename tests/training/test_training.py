import numpy as np
import pytest
import torch

import sclabel
from conftest import FAST
from sclabel.config import TrainConfig
from sclabel.errors import InputError


def _weights(model):
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def test_training_learns_synthetic_cell_types(trained_model):
    test = trained_model.metrics["test"]
    assert test["macro_f1"] > 0.9
    assert trained_model.metrics["n_cells"]["test"] > 0
    history = trained_model.metrics["fit"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]


def test_same_seed_gives_identical_weights_on_cpu(synthetic):
    runs = [
        sclabel.train(synthetic, label_key="cell_type", split_by="donor", **FAST, model="mlp")
        for _ in range(2)
    ]
    first, second = (_weights(m) for m in runs)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_another_seed_gives_other_weights(synthetic):
    sgd = {"model": "linear", "model_params": {"solver": "sgd"}, **FAST}
    a = sclabel.train(synthetic, label_key="cell_type", **sgd)
    b = sclabel.train(synthetic, label_key="cell_type", **{**sgd, "seed": 1})
    assert not torch.equal(a.module.linear.weight, b.module.linear.weight)


def test_a_convex_full_batch_fit_does_not_depend_on_the_seed(synthetic):
    # linear on in-memory data of moderate size: L-BFGS from zero weights, one optimum
    a = sclabel.train(synthetic, label_key="cell_type", model="linear", **FAST)
    adata = synthetic.copy()
    adata.obs["given"] = a.split["split"].reindex(adata.obs_names).to_numpy()  # same cells
    b = sclabel.train(adata, label_key="cell_type", model="linear", split_key="given",
                      **{**FAST, "seed": 1})  # fmt: skip
    assert a.metrics["fit"]["epochs_run"] == 1
    torch.testing.assert_close(a.module.linear.weight, b.module.linear.weight)


def test_early_stopping_keeps_the_best_epoch(synthetic):
    model = sclabel.train(
        synthetic,
        label_key="cell_type",
        model="linear",
        model_params={"solver": "sgd"},  # the epoch loop, not the full-batch solver
        max_epochs=60,
        patience=2,
        min_steps=0,  # stop as soon as patience runs out (tests/training/test_schedule.py)
        lr=0.05,
        progress=False,
    )
    fit = model.metrics["fit"]
    scores = [h["val_macro_f1"] for h in fit["history"]]
    assert fit["best_val_macro_f1"] == max(scores)
    # among the epochs with the best macro-F1, the one with the lowest validation loss is kept
    tied = [h for h in fit["history"] if h["val_macro_f1"] == max(scores)]
    assert min(tied, key=lambda h: h["val_loss"])["epoch"] == fit["best_epoch"]
    assert fit["epochs_run"] <= fit["best_epoch"] + 3  # stopped `patience` epochs after the best


def test_split_is_by_donor_and_saved_with_the_model(trained_model):
    split = trained_model.split
    assert set(split["split"]) == {"train", "val", "test"}
    parts_per_donor = split.groupby("group")["split"].nunique()
    assert (parts_per_donor == 1).all()


def test_unlabeled_cells_are_left_out(synthetic):
    synthetic.obs["cell_type"] = synthetic.obs["cell_type"].astype(object)
    synthetic.obs.iloc[:50, 0] = np.nan
    model = sclabel.train(synthetic, label_key="cell_type", model="linear", **FAST)
    assert sum(model.metrics["n_cells"].values()) == synthetic.n_obs - 50
    assert not model.split.index.isin(synthetic.obs_names[:50]).any()


def test_layer_option_trains_on_that_matrix(synthetic):
    synthetic.layers["counts"] = synthetic.X.copy()
    synthetic.X = synthetic.X * -1  # X now looks scaled: only the layer is usable
    with pytest.raises(InputError, match="negative"):
        sclabel.train(synthetic, label_key="cell_type", **FAST, model="mlp")
    model = sclabel.train(synthetic, label_key="cell_type", layer="counts", **FAST, model="mlp")
    assert model.training_input == "counts"


def test_missing_label_column_lists_the_available_ones(synthetic):
    with pytest.raises(InputError, match=r"'celltype' not found.*cell_type.*donor"):
        sclabel.train(synthetic, label_key="celltype", **FAST, model="mlp")


def test_single_class_is_refused(synthetic):
    synthetic.obs["one"] = "T cell"
    with pytest.raises(InputError, match="1 class.*at least 2"):
        sclabel.train(synthetic, label_key="one", **FAST, model="mlp")


def test_missing_split_column_is_refused(synthetic):
    with pytest.raises(InputError, match="split column 'patient' not found"):
        sclabel.train(synthetic, label_key="cell_type", split_by="patient", **FAST, model="mlp")


@pytest.mark.parametrize(
    ("option", "message"),
    [({"max_epoch": 3}, "unknown option"), ({"lr": 0}, "lr"), ({"batch_size": 0}, "batch_size")],
)
def test_bad_training_options_are_refused(option, message):
    with pytest.raises(InputError, match=message):
        TrainConfig.from_dict(option)


def test_backed_h5ad_trains_the_same_model_as_in_memory(synthetic, tmp_path):
    synthetic.write_h5ad(tmp_path / "train.h5ad")
    backed = sclabel.read(tmp_path / "train.h5ad", backed=True)
    from_disk = sclabel.train(backed, label_key="cell_type", model="linear", **FAST)
    in_memory = sclabel.train(synthetic, label_key="cell_type", model="linear", **FAST)
    assert torch.equal(from_disk.module.linear.weight, in_memory.module.linear.weight)


def test_mixed_precision_runs_through_fabric(synthetic):
    model = sclabel.train(
        synthetic, label_key="cell_type", model="mlp", precision="bf16-mixed", **FAST
    )
    assert model.hardware.precision == "bf16-mixed"  # hardware is recorded apart from TrainConfig
    assert model.metrics["test"]["macro_f1"] > 0.5
    assert all(p.dtype == torch.float32 for p in model.module.parameters())  # weights stay fp32


def test_batch_size_defaults_to_about_20_steps_per_epoch(synthetic):
    from sclabel.config import auto_batch_size

    assert [auto_batch_size(n) for n in (100, 1000, 2000, 10**6)] == [32, 50, 100, 256]
    sgd = {"model": "linear", "model_params": {"solver": "sgd"}}
    auto = sclabel.train(synthetic, label_key="cell_type", max_epochs=2, progress=False, **sgd)
    n_train = auto.metrics["n_cells"]["train"]
    assert auto.metrics["fit"]["batch_size"] == auto_batch_size(n_train)
    fixed = sclabel.train(synthetic, label_key="cell_type", **sgd, **FAST)
    assert fixed.metrics["fit"]["batch_size"] == FAST["batch_size"]


def test_a_given_split_column_is_used_as_is(synthetic):
    donors = synthetic.obs["donor"].astype(str)
    part = donors.map({"donor_0": "val", "donor_1": "test"}).fillna("train")
    part[:5] = np.nan  # unassigned cells are left out
    synthetic.obs["part"] = part
    model = sclabel.train(synthetic, label_key="cell_type", split_key="part", **FAST, model="mlp")
    expected = part.dropna()
    assert model.split["split"].to_dict() == expected.to_dict()
    synthetic.obs["bad"] = "holdout"
    with pytest.raises(InputError, match="expected train, val or test"):
        sclabel.train(synthetic, label_key="cell_type", split_key="bad", **FAST, model="mlp")
