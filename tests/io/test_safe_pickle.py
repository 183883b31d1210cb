import os
import pickle

import numpy as np
import pytest

from conftest import shared_file
from sclabel.errors import InputError
from sclabel.io import safe_pickle


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": _Exploit(marker)}))
    with pytest.raises(InputError, match=r"refusing to load posix\.system|refusing to load os"):
        safe_pickle.load(path)
    assert not marker.exists()


def test_plain_data_and_numpy_round_trip(tmp_path):
    value = {"ids": ["a", "b"], "weights": np.arange(6, dtype=np.float32).reshape(2, 3),
             "scale": np.float64(2.5), "tags": {1, 2}}  # fmt: skip
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(value))
    loaded = safe_pickle.load(path)
    np.testing.assert_array_equal(loaded["weights"], value["weights"])
    assert loaded["ids"] == ["a", "b"] and loaded["scale"] == 2.5 and loaded["tags"] == {1, 2}


def test_listed_classes_come_back_as_inert_records(tmp_path):
    import collections

    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps(collections.Counter(a=2)))
    with pytest.raises(InputError, match="collections.Counter"):
        safe_pickle.load(path)
    record = safe_pickle.load(path, records=["collections.Counter"])
    assert isinstance(record, safe_pickle.PickledObject)
    assert record.pickled_class == "collections.Counter"
    assert record.args == ({"a": 2},)


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(list(range(100)))[:20])
    with pytest.raises(InputError, match="cannot read pickle"):
        safe_pickle.load(path)


def test_real_geneformer_dictionaries_load():
    tokens = safe_pickle.load(shared_file("geneformer_v1/token_dictionary.pkl"))
    assert tokens["<pad>"] == 0 and tokens["<mask>"] == 1 and len(tokens) == 25426


def test_real_celltypist_model_loads_without_importing_sklearn_classes():
    path = shared_file("celltypist_models/ref_pbmc_clean_celltypist_model_AIFI_L3_2024-04-19.pkl")
    model = safe_pickle.load(
        path,
        records=[
            "sklearn.linear_model._logistic.LogisticRegression",
            "sklearn.preprocessing._data.StandardScaler",
        ],
    )
    classifier, scaler = model["Model"].state, model["Scaler_"].state
    assert classifier["coef_"].shape == (71, 2504)
    assert len(classifier["features"]) == scaler["mean_"].size == 2504
