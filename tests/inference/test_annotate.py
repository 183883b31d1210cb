"""One call from an AnnData (or .h5ad) to annotated cells, with CellTypist's column names
on request."""

import anndata as ad
import numpy as np

import sclabel
from conftest import run


def test_annotate_writes_the_answers_in_place(trained_model):
    query = sclabel.datasets.synthetic(200, 200, 4, 6, seed=1, cell_seed=3)
    prediction = sclabel.annotate(query, trained_model, celltypist_names=True)
    assert (query.obs["sclabel_label"].astype(str).to_numpy() == prediction.labels).all()
    assert (
        query.obs["predicted_labels"].astype(str) == query.obs["sclabel_label"].astype(str)
    ).all()
    np.testing.assert_array_equal(query.obs["conf_score"], prediction.confidence)
    assert query.obsm["sclabel_probabilities"].shape == (200, len(trained_model.classes))


def test_annotate_with_majority_voting_on_given_clusters(trained_model):
    query = sclabel.datasets.synthetic(200, 200, 4, 6, seed=1, cell_seed=3)
    query.obs["leiden"] = query.obs["cell_type"].astype(str)
    sclabel.annotate(query, trained_model, cluster_key="leiden", celltypist_names=True)
    assert "majority_voting" in query.obs and "over_clustering" in query.obs
    per_cluster = query.obs.groupby("leiden", observed=True)["majority_voting"].nunique()
    assert (per_cluster == 1).all()


def test_cli_annotates_a_file_in_place_or_to_out(saved_model, tmp_path):
    query = sclabel.datasets.synthetic(150, 200, 4, 6, seed=1, cell_seed=5)
    query.write_h5ad(tmp_path / "q.h5ad")
    result = run("annotate", tmp_path / "q.h5ad", "--model", saved_model, "--celltypist-names")
    assert result.returncode == 0, result.stderr
    annotated = ad.read_h5ad(tmp_path / "q.h5ad")
    assert {"sclabel_label", "predicted_labels", "conf_score"} <= set(annotated.obs)
    assert annotated.n_obs == 150 and annotated.X is not None
    result = run("annotate", tmp_path / "q.h5ad", "--model", saved_model, "--key-added", "v2",
                 "--out", tmp_path / "out.h5ad")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "v2_label" in ad.read_h5ad(tmp_path / "out.h5ad").obs
    assert "v2_label" not in ad.read_h5ad(tmp_path / "q.h5ad").obs
    query.obs["leiden"] = query.obs["cell_type"].astype(str)
    query.write_h5ad(tmp_path / "c.h5ad")
    voted = run("annotate", tmp_path / "c.h5ad", "--model", saved_model, "--cluster-key", "leiden")
    assert voted.returncode == 0, voted.stderr
    obs = ad.read_h5ad(tmp_path / "c.h5ad").obs
    changed = int(
        (obs["sclabel_label"].astype(str) != obs["sclabel_majority_voting"].astype(str)).sum()
    )
    assert "majority voting over 4 clusters (obs['leiden'])" in voted.stdout
    assert f"differs from the cell's own for {changed:,} cells" in voted.stdout
    bad = run("annotate", tmp_path / "q.h5ad", "--model", saved_model, "--out", tmp_path / "x.csv")
    assert bad.returncode == 2 and "annotate writes an .h5ad" in bad.stderr


def test_cli_annotates_and_reports_in_one_command(saved_model, tmp_path):
    query = sclabel.datasets.synthetic(150, 200, 4, 6, seed=1, cell_seed=5)
    query.write_h5ad(tmp_path / "q.h5ad")
    result = run("--quiet", "annotate", tmp_path / "q.h5ad", "--model", saved_model,
                 "--report", tmp_path / "report")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"report: {tmp_path / 'report' / 'report.html'}" in result.stdout
    html = (tmp_path / "report" / "report.html").read_text()
    labels = set(ad.read_h5ad(tmp_path / "q.h5ad").obs["sclabel_label"])
    assert all(label in html for label in labels)
    # a report folder that would replace a user's files is refused before anything is written
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    query.write_h5ad(tmp_path / "fresh.h5ad")
    bad = run("--quiet", "annotate", tmp_path / "fresh.h5ad", "--model", saved_model,
              "--report", tmp_path / "notes")  # fmt: skip
    assert bad.returncode == 2 and "is not a sclabel report" in bad.stderr
    assert "sclabel_label" not in ad.read_h5ad(tmp_path / "fresh.h5ad").obs


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("sclabel ")
