"""What answers for a cell: one classifier, a reference mapping, or a consensus of several.

The engine predicts chunk by chunk through a `Job`: bound once to the query, then asked for
the probabilities (and any further per-cell answers) of rows start:stop. One job, one model;
or a consensus, as popV reports one: every member (a classifier, an imported CellTypist
model, a model's kNN reference mapping) predicts the chunk, the probabilities are averaged
over the union of their classes (a class a member lacks counts 0 there), the label is that
average's most probable class, `agreement` says what share of the members' own labels agree
with it, and each member's label is kept (`label_<member>`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sclabel.data.loader import PRESENT_KEY, counted, iterate_batches
from sclabel.errors import InputError
from sclabel.models.base import predict_proba


@dataclass
class Member:
    """One voice: a model's classifier head (`kind="classify"`) or its reference mapping."""

    name: str
    model: object
    kind: str = "classify"
    task: int = 0
    calibrated: bool = True
    bound: object = None

    def __post_init__(self) -> None:
        if self.kind == "map" and self.model.reference is None:
            msg = (
                f"{self.name}: the model has no reference index to map with; build one: "
                "sclabel reference REF.h5ad --model MODEL"
            )
            raise InputError(msg)

    def bind(self, data, **options) -> None:
        self.bound = self.model.input_spec.bind(data, **options)

    @property
    def classes(self) -> list[str]:
        if self.kind == "map":
            return list(self.model.reference.classes)
        return list(self.model.tasks.values())[self.task]

    def fingerprint(self) -> str:
        return f"{self.kind}:{self.model.weights_digest()}"

    def probabilities(self, start: int, stop: int, batch_size: int, bar=None) -> np.ndarray:
        """Rows start:stop; `bar` (a `cell_bar`) ticks per batch."""
        if self.kind == "map":
            mapped = self.model.reference.map_rows(self.model, self.bound, slice(start, stop))
            if bar is not None:
                bar.update(stop - start)
            return mapped
        X = self.bound.rows(slice(start, stop))
        present = self.bound.present
        batches = iterate_batches(X, batch_size=batch_size, sparse=self.model.module.sparse_input)
        if bar is not None:
            batches = counted(batches, bar)
        batches = ({**batch, PRESENT_KEY: present} for batch in batches)
        proba = predict_proba(self.model.module, batches, task=self.task).numpy()
        return self.model.calibration.apply(proba) if self.calibrated else proba


@dataclass
class Job:
    members: list[Member]
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise InputError(f"consensus members need distinct names, got {names}")
        for member in self.members:
            self.classes += [c for c in member.classes if c not in self.classes]

    @property
    def consensus(self) -> bool:
        return len(self.members) > 1

    @property
    def primary(self):
        """The first member's bound input: the query's cells, names and coverage."""
        return self.members[0].bound

    def bind(self, data, **options) -> None:
        for member in self.members:
            member.bind(data, **options)

    def fingerprint(self) -> list[str]:
        return [m.fingerprint() for m in self.members]

    def chunk(self, start: int, stop: int, batch_size: int, bar=None) -> tuple[np.ndarray, dict]:
        """Probabilities (cells x `classes`) of rows start:stop, and further answers; `bar`
        counts cells x members."""
        if not self.consensus:
            return self.members[0].probabilities(start, stop, batch_size, bar), {}
        total = np.zeros((stop - start, len(self.classes)), np.float64)
        labels = {}
        for member in self.members:
            proba = member.probabilities(start, stop, batch_size, bar)
            columns = [self.classes.index(c) for c in member.classes]
            total[:, columns] += proba
            labels[member.name] = np.asarray(member.classes, dtype=object)[proba.argmax(axis=1)]
        mean = (total / len(self.members)).astype(np.float32)
        chosen = np.asarray(self.classes, dtype=object)[mean.argmax(axis=1)]
        agree = np.mean([labels[name] == chosen for name in labels], axis=0)
        extra = {"agreement": agree.astype(np.float32)}
        extra |= {f"label_{name}": values for name, values in labels.items()}
        return mean, extra
