"""A checkpoint written by sclabel 0.1.0 (format 1) must keep loading and meaning the same.

The expected output is computed here from the stored weights and the documented
preprocessing (log1p of counts scaled to 10,000 per cell), not copied from sclabel.
"""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import sclabel

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "linear_format_v1"


def test_format_1_checkpoint_loads_and_predicts_as_documented():
    model = sclabel.Model.load(OLD)
    config = json.loads((OLD / "config.json").read_text())
    assert config["format_version"] == 1
    assert model.family == "linear" and len(model.genes) == 20 and len(model.classes) == 3

    query = sclabel.datasets.synthetic(40, 20, 3, 3, markers_per_type=4, seed=11, cell_seed=5)
    counts = query.X.toarray().astype(np.float64)
    x = np.log1p(counts / counts.sum(axis=1, keepdims=True) * config["data"]["target_sum"])
    weights = load_file(OLD / "model.safetensors")
    logits = x @ weights["linear.weight"].T.astype(np.float64) + weights["linear.bias"]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)

    prediction = model.predict(query, progress=False)
    np.testing.assert_allclose(prediction.probabilities, expected, rtol=1e-4, atol=1e-6)
