"""Progress on long work: bars on stderr that count cells batch by batch (predict, embed,
explain), one bar per ensemble member, counters in benchmark and the disease runner, and
nothing on stderr with --quiet."""

from __future__ import annotations

import io
import logging

import pytest

import sclabel
from conftest import FAST, run
from sclabel.data import loader
from sclabel.inference import engine, explain


class Recorder:
    """`cell_bar` stand-in: a real tqdm (no delay, into a buffer) that keeps every update."""

    def __init__(self):
        self.bars = []

    def __call__(self, total, desc, progress=True, **options):
        bar = loader.cell_bar(total, desc, progress, delay=0, file=io.StringIO(), **options)
        updates = []
        update = bar.update
        bar.update = lambda n=1: (updates.append(n), update(n))[1]
        self.bars.append((desc, total, updates, bar))
        return bar


@pytest.fixture
def recorder(monkeypatch):
    recorder = Recorder()
    for module in (engine, explain):
        monkeypatch.setattr(module, "cell_bar", recorder)
    return recorder


def test_prediction_ticks_per_batch_and_counts_every_member(trained_model, recorder):
    query = sclabel.datasets.synthetic(700, 200, 4, 6, seed=2)
    trained_model.predict(query, batch_size=128, chunk_size=500)
    ((desc, total, updates, bar),) = recorder.bars
    assert (desc, total) == ("predicting", 700)
    assert updates == [125] * 4 + [100] * 2  # near-equal batches of 128 at most, per chunk
    assert bar.n == 700
    sclabel.predict([trained_model, trained_model.quantized()], query, batch_size=256)
    desc, total, updates, bar = recorder.bars[-1]
    assert (desc, total, bar.n) == ("predicting (2 members)", 1400, 1400)


def test_explain_ticks_per_batch(trained_model, recorder):
    cells = sclabel.datasets.synthetic(300, 200, 4, 6, seed=2)
    trained_model.explain(cells, batch_size=100)
    ((desc, total, updates, _),) = recorder.bars
    assert (desc, total, updates) == ("explaining", 300, [100, 100, 100])


def test_ensemble_members_have_their_own_bar(synthetic, capsys):
    sclabel.train(synthetic, label_key="cell_type", split_by="donor", model="mlp", ensemble=2,
                  **{**FAST, "max_epochs": 2, "progress": True})  # fmt: skip
    err = capsys.readouterr().err
    assert "member 1/2" in err and "member 2/2" in err
    sclabel.train(synthetic, label_key="cell_type", split_by="donor", model="mlp", **FAST)
    assert "member" not in capsys.readouterr().err and FAST["progress"] is False


def test_quiet_cli_writes_nothing_to_stderr(saved_model, tmp_path):
    # cells drawn like the model's training cells: a query from another synthetic world
    # (seed=2) is less confident and rightly gets the shift warning, which --quiet keeps
    query = sclabel.datasets.synthetic(300, 200, 4, 6, seed=1, cell_seed=2)
    query.write_h5ad(tmp_path / "q.h5ad")
    result = run("--quiet", "predict", tmp_path / "q.h5ad", "--model", saved_model,
                 "--out", tmp_path / "p.csv")  # fmt: skip
    assert result.returncode == 0 and result.stderr == ""


def test_benchmark_names_each_variant_as_it_starts(caplog):
    from sclabel.config import DataConfig
    from sclabel.studies.benchmark import run_benchmark
    from sclabel.training.data import load_training_data

    adata = sclabel.datasets.synthetic(400, 80, 3, 6, seed=3)
    data = load_training_data(adata, DataConfig(label_key="cell_type", split_by="donor"),
                              progress=False)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="sclabel"):
        run_benchmark(data, ["linear", "celltypist"], train_options={"max_epochs": 2,
                                                                   "progress": False})  # fmt: skip
    lines = [r.getMessage() for r in caplog.records]
    train = data.subsets["train"][1].size
    assert f"variant 1/2: linear on {train:,} training cells" in lines
    assert f"variant 2/2: celltypist on {train:,} training cells" in lines
    assert any(line.startswith("celltypist: test macro-F1 ") for line in lines)
    assert not any("R^2: {" in line for line in lines)  # no raw dicts


def test_epochs_show_a_batch_bar_once_they_run_long(synthetic, monkeypatch):
    from sclabel.training import loop

    made = []
    real = loop.tqdm

    def recording(*args, **options):
        bar = real(*args, **{**options, "file": io.StringIO()})
        made.append((options.get("desc"), options.get("unit"), options.get("delay"), bar))
        return bar

    monkeypatch.setattr(loop, "tqdm", recording)
    model = sclabel.train(synthetic, label_key="cell_type", split_by="donor", model="mlp",
                          **{**FAST, "max_epochs": 2, "progress": True})  # fmt: skip
    epochs = [(d, u, delay, bar.n) for d, u, delay, bar in made if u == "batch"]
    steps = -(-model.metrics["n_cells"]["train"] // model.metrics["fit"]["batch_size"])
    assert epochs == [("epoch 1", "batch", 2.0, steps), ("epoch 2", "batch", 2.0, steps)]
