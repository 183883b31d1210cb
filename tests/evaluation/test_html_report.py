"""report.html: self-contained, opened in a real headless browser (Debian's chromium)."""

import re
import shutil
import subprocess

import numpy as np
import pytest

import sclabel
from conftest import FAST, run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_dom(path) -> str:
    """The page's DOM after load, as headless Chromium builds it from the file alone."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def check_self_contained(text: str) -> None:
    # every figure is inline, nothing refers to a file or the network
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in text and "https://" not in text
    assert "default-src 'none'" in text


@pytest.fixture(scope="module")
def linear_and_query():
    adata = sclabel.datasets.synthetic(800, 200, 4, 6, seed=3)
    model = sclabel.train(adata, label_key="cell_type", split_by="donor", model="linear", **FAST)
    return model, adata


def test_the_report_opens_in_a_browser_with_every_figure(linear_and_query, tmp_path):
    model, query = linear_and_query
    prediction = model.predict(query, progress=False)
    prediction.majority_vote(query, resolution=1.0)
    prediction.to_report(tmp_path / "r", adata=query, model=model)
    text = (tmp_path / "r" / "report.html").read_text()
    check_self_contained(text)
    # embedding (label, confidence, agreement with the vote) and the marker dot plot
    assert len(re.findall(r"<img ", text)) == 2
    dom = rendered_dom(tmp_path / "r" / "report.html")
    assert 'data-images-ok="true"' in dom  # the browser decoded every embedded figure
    for heading in ("Predicted labels", "Embedding", "Marker genes per predicted label",
                    "Majority voting over clusters"):  # fmt: skip
        assert f"<h2>{heading}</h2>" in dom
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Majority voting" in md
    for label in set(prediction.labels):
        assert f"| {label} |" in md


def test_marker_genes_come_from_the_model_weights(linear_and_query):
    """For a linear model, input x gradient is expression x weight: the top genes of a class
    are those whose weight times mean expression is largest."""
    from sclabel.evaluation.annotation import marker_genes, model_values

    model, query = linear_and_query
    labels = np.asarray(model.predict(query, progress=False).labels, dtype=object)
    rows = np.arange(query.n_obs)
    x = model_values(model.input_spec.bind(query), rows)
    markers = marker_genes(model, x, labels, n=3)
    weight = model.module.linear.weight.detach().numpy()
    dense = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    for label, genes in markers.items():
        k = list(model.classes).index(label)
        expected = np.argsort(-(dense[labels == label] * weight[k]).mean(0))[:3]
        assert genes == [int(g) for g in expected]


def test_cli_predict_writes_the_report_and_refuses_a_bad_folder(linear_and_query, tmp_path):
    model, query = linear_and_query
    model.save(tmp_path / "m")
    query.write_h5ad(tmp_path / "q.h5ad")
    result = run("--quiet", "predict", tmp_path / "q.h5ad", "--model", tmp_path / "m",
                 "--out", tmp_path / "p.csv", "--report", tmp_path / "rep")  # fmt: skip
    assert result.returncode == 0, result.stderr
    check_self_contained((tmp_path / "rep" / "report.html").read_text())
    # the embedding of the model's input and the markers, no vote: two figures
    assert (tmp_path / "rep" / "report.html").read_text().count("<img ") == 2
    (tmp_path / "afile").write_text("x")
    bad = run("--quiet", "predict", tmp_path / "q.h5ad", "--model", tmp_path / "m",
              "--out", tmp_path / "p2.csv", "--report", tmp_path / "afile")  # fmt: skip
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "choose a folder name" in bad.stderr
    assert not (tmp_path / "p2.csv").exists()


def test_evaluate_writes_report_html_next_to_report_md(linear_and_query, tmp_path):
    model, query = linear_and_query
    model.evaluate(query, split="test", out_dir=tmp_path / "ev")
    text = (tmp_path / "ev" / "report.html").read_text()
    check_self_contained(text)
    assert (tmp_path / "ev" / "report.md").exists()
    # confusion, per-class F1, reliability, embedding, markers
    assert text.count("<img ") == 5
    assert 'data-images-ok="true"' in rendered_dom(tmp_path / "ev" / "report.html")
