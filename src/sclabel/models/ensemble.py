"""Deep ensembles: members of one family trained with different seeds; probabilities averaged.

The ensemble is itself a Classifier, so prediction, checkpoints (one safetensors file with
`members.<i>.` prefixes) and evaluation treat it like any model. Its logits are the log of
the mean member probabilities, so softmax(logits) is exactly that mean.
"""

from __future__ import annotations

import torch
from torch import nn

from sclabel.models.base import Classifier, ModelOutput


def combine(members: list[Classifier]) -> Classifier:
    """One member is just that model; several make an Ensemble."""
    return members[0] if len(members) == 1 else Ensemble(members)


def size_of(module: Classifier) -> int:
    return len(module.members) if isinstance(module, Ensemble) else 1


class Ensemble(Classifier):
    def __init__(self, members: list[Classifier]) -> None:
        first = members[0]
        super().__init__(first.n_genes, first.n_classes, first.params)
        self.members = nn.ModuleList(members)
        self.sparse_input = all(m.sparse_input for m in members)

    def forward(self, batch):
        probabilities = torch.stack(
            [torch.softmax(m(batch).logits.float(), dim=1) for m in self.members]
        ).mean(dim=0)
        return ModelOutput(logits=torch.log(probabilities.clamp_min(1e-30)))
