"""Cell Ontology-aware scoring, offline, from the CL that `cellxgene-ontology-guide` ships.

scTab's rule: predicting the true cell type or any of its descendants (a more specific type)
is right; predicting an ancestor (less specific) or anything else is wrong.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np

from sclabel.errors import InputError

log = logging.getLogger("sclabel")
_CL_ID = re.compile(r"^CL:\d{7}$")


class CellOntology:
    """Name, synonym and id look-ups plus descendant tests over the bundled Cell Ontology."""

    def __init__(self) -> None:
        try:
            from cellxgene_ontology_guide.ontology_parser import OntologyParser
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise InputError(
                "ontology scoring needs `pip install cellxgene-ontology-guide`"
            ) from err
        self._parser = OntologyParser()

    @functools.cached_property
    def _names(self) -> dict[str, str]:
        """Lower-cased label or synonym -> CL id; exact labels win over synonyms."""
        labels = self._parser.get_term_label_to_id_map("CL")
        names: dict[str, str] = {}
        for term, synonyms in self._parser.map_term_synonyms(list(labels.values())).items():
            for synonym in synonyms:
                names.setdefault(synonym.lower(), term)
        names.update({label.lower(): term for label, term in labels.items()})
        return names

    def term_id(self, name: str) -> str | None:
        """The CL id of a label, synonym or id (case-insensitive); None when unknown."""
        name = str(name).strip()
        if _CL_ID.match(name):
            return name if self._parser.is_valid_term_id(name) else None
        return self._names.get(name.lower())

    def label(self, term_id: str) -> str:
        return self._parser.get_term_label(term_id)

    @functools.cache  # noqa: B019 - one ontology object per evaluation, a few thousand terms
    def descendants_or_self(self, term_id: str) -> frozenset[str]:
        return frozenset(self._parser.get_term_descendants(term_id, include_self=True))

    def ancestors(self, term_id: str) -> list[str]:
        return list(self._parser.get_term_ancestors(term_id))

    def n_ancestors(self, term_id: str) -> int:
        return len(self.ancestors(term_id))

    def map_labels(self, labels: Sequence[str], ids: Sequence[str] | None = None) -> dict[str, str]:
        """Label -> CL id, from a paired id column (e.g. `cell_type_ontology_term_id`) when
        given, else by exact name or synonym. Unmapped labels are left out and logged."""
        mapping: dict[str, str] = {}
        if ids is not None:
            for label, term in zip(labels, ids, strict=True):
                if isinstance(term, str) and self._parser.is_valid_term_id(term):
                    mapping.setdefault(str(label), term)
        for label in dict.fromkeys(map(str, labels)):
            if label not in mapping and (term := self.term_id(label)) is not None:
                mapping[label] = term
        unmapped = sorted(set(map(str, labels)) - set(mapping))
        if unmapped:
            log.info("no Cell Ontology term for %d label(s): %s", len(unmapped), unmapped[:10])
        return mapping


def ontology_adjusted(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    mapping: Mapping[str, str],
    ontology: CellOntology,
) -> np.ndarray:
    """Predictions with every 'descendant of the truth' replaced by the truth itself.

    Scoring the adjusted predictions with any flat metric gives its ontology-aware version.
    Labels without a CL term are scored flat (only an exact match is right).
    """
    adjusted = np.asarray(y_pred, dtype=object).copy()
    pairs = {(t, p) for t, p in zip(y_true, y_pred, strict=True) if t != p}
    right = {
        (t, p)
        for t, p in pairs
        if t in mapping and p in mapping and mapping[p] in ontology.descendants_or_self(mapping[t])
    }
    for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)):
        if (t, p) in right:
            adjusted[i] = t
    return adjusted
