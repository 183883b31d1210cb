"""Answers at the right depth of the Cell Ontology: "T cell" when unsure between CD4 and CD8.

When a model's classes are Cell Ontology terms (by label, synonym or id), every term above
them is a possible answer too, and its probability is the summed probability of the classes
below it. A cell gets the deepest term (most ancestors) whose probability reaches the
threshold, falling back to more general terms, the way a pathologist answers "a T cell" when
the subset is unclear. Coarse levels (`levels=2`) name, for each cell's answer, the groups
above its class that split the model's classes (a term above some classes but not all),
from the most general down, so a table can be read at several resolutions.
"""

from __future__ import annotations

import numpy as np

from sclabel.errors import InputError, listing


class OntologyLevels:
    """The model's classes placed in the Cell Ontology (offline, see evaluation/ontology)."""

    def __init__(self, classes: list[str]) -> None:
        from sclabel.evaluation.ontology import CellOntology

        self.classes = list(classes)
        self.cl = CellOntology()
        mapping = self.cl.map_labels(self.classes)
        unmapped = [c for c in self.classes if c not in mapping]
        if unmapped:
            msg = (
                f"{len(unmapped)} of the model's {len(self.classes)} classes have no Cell "
                f"Ontology term: {listing(unmapped, 8)}; ontology levels need classes named by CL "
                "labels, synonyms or ids"
            )
            raise InputError(msg)
        self.terms = [mapping[c] for c in self.classes]
        candidates = set(self.terms)
        for term in self.terms:
            candidates |= set(self.cl.ancestors(term))
        # which classes each candidate term covers (itself or a descendant)
        self.cover = {
            t: np.array([c in self.cl.descendants_or_self(t) for c in self.terms])
            for t in sorted(candidates)
        }
        self.depth = {t: self.cl.n_ancestors(t) for t in self.cover}

    def answer(self, probabilities: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
        """The deepest term each cell reaches `threshold` in: its label, id and probability."""
        if not 0 < threshold <= 1:
            raise InputError(f"ontology threshold must be in (0, 1], got {threshold}")
        terms = sorted(self.cover, key=lambda t: (-self.depth[t], t))
        chosen = np.full(len(probabilities), "", dtype=object)
        mass = np.zeros(len(probabilities), np.float32)
        for term in terms:  # deepest first: the first term a cell reaches is its answer
            share = probabilities[:, self.cover[term]].sum(axis=1)
            take = (chosen == "") & (share >= threshold - 1e-6)
            chosen[take], mass[take] = term, share[take]
        names = {t: self.cl.label(t) for t in set(chosen)}
        return {
            "ontology_label": np.array([names[t] for t in chosen], dtype=object),
            "ontology_term": chosen,
            "ontology_probability": mass,
        }

    def coarse(self, labels: np.ndarray, n_levels: int) -> dict[str, np.ndarray]:
        """`level_1` .. `level_n`: each predicted class's splitting ancestors, general first
        (a class with fewer such groups repeats its deepest one, then itself)."""
        if n_levels < 1:
            raise InputError(f"levels must be at least 1, got {n_levels}")
        n = len(self.classes)
        groups: dict[tuple, str] = {}  # one term per group of classes: the most general
        for term, covers in self.cover.items():
            key = tuple(np.flatnonzero(covers))
            if 1 < len(key) < n and (
                key not in groups or self.depth[term] < self.depth[groups[key]]
            ):
                groups[key] = term
        splitting = list(groups.values())
        chains = {}
        for i, name in enumerate(self.classes):
            above = [t for t in splitting if self.cover[t][i]]
            above.sort(key=lambda t: (-self.cover[t].sum(), self.depth[t]))
            chain = [self.cl.label(t) for t in above] + [name]
            chains[name] = [chain[min(k, len(chain) - 1)] for k in range(n_levels)]
        out = {}
        for k in range(n_levels):
            out[f"level_{k + 1}"] = np.array(
                [chains[label][k] if label in chains else label for label in labels], dtype=object
            )
        return out
