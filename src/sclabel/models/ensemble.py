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
        self.capabilities = first.capabilities
        self.sparse_input = all(m.sparse_input for m in members)
        self.extra_classes = getattr(first, "extra_classes", {})

    def forward(self, batch):
        outputs = [m(batch) for m in self.members]
        logits = [
            _mean_log_proba([o.all_logits()[t] for o in outputs])
            for t in range(1 + len(self.extra_classes))
        ]
        return ModelOutput(
            logits=logits[0], task_logits=dict(zip(self.extra_classes, logits[1:], strict=True))
        )

    @torch.no_grad()
    def explain_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Members' gene importances averaged (each sums to 1 per cell, so the mean does
        too), with the ensemble's logits."""
        parts = [m.explain_batch(x) for m in self.members]
        importance = torch.stack([weights for weights, _ in parts]).mean(dim=0)
        return importance, _mean_log_proba([logits for _, logits in parts])


def _mean_log_proba(logits: list[torch.Tensor]) -> torch.Tensor:
    probabilities = torch.stack([torch.softmax(z.float(), dim=1) for z in logits]).mean(dim=0)
    return torch.log(probabilities.clamp_min(1e-30))
