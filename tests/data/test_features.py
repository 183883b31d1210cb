"""GenePCA: the PCA of cells used by majority voting and reference mapping."""

import numpy as np
from sklearn.decomposition import PCA

import sclabel
from sclabel.data.features import GenePCA
from sclabel.data.genes import Vocabulary
from sclabel.data.inputs import InputSpec
from sclabel.io.sources import AnnDataSource


def test_chunked_pca_is_the_exact_pca_of_the_standardized_genes():
    adata = sclabel.datasets.synthetic(900, 300, 5, 4, seed=4)
    source = AnnDataSource(adata)
    vocabulary, gene_key = Vocabulary.from_var(source.var)
    bound = InputSpec(vocabulary, gene_key=gene_key).bind(source, gene_key=gene_key)
    pca = GenePCA.fit(bound, n_hvg=120, n_pcs=20, chunk_size=128)  # 8 chunks
    assert pca.genes.size == 120 and pca.components.shape == (20, 120)
    Z = np.concatenate([pca.standardized(c) for c in bound.chunks(128, project=False)])
    reference = PCA(20, svd_solver="full").fit(Z)
    # the same components (up to sign) and the same centre as a PCA of all cells at once
    cosines = np.abs((pca.components * reference.components_).sum(axis=1))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-4)
    np.testing.assert_allclose(pca.center, reference.mean_, atol=1e-5)
    scores = pca.scores(bound, chunk_size=300)
    np.testing.assert_allclose(np.abs(scores), np.abs(reference.transform(Z)), atol=1e-3)
    # signs are fixed: the largest loading of every component is positive
    assert (pca.components[np.arange(20), np.abs(pca.components).argmax(axis=1)] > 0).all()
