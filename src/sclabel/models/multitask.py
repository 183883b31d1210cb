"""Multi-task (multi-head): one shared encoder, one classification head per label column.

Any family whose model returns an `embedding` becomes multi-task by wrapping: the family's
own head answers the primary label column (e.g. severity) and a linear head per further
column (e.g. state) reads the same embedding. The loop weighs the tasks' losses
(TrainConfig.task_weights), so the encoder learns what all columns share. Prediction picks a
task by its label column; checkpoints store the extra heads beside the family's weights.
"""

from __future__ import annotations

from torch import nn

from sclabel.errors import InputError
from sclabel.models.base import Classifier, ModelOutput


class MultiTask(Classifier):
    def __init__(self, base: Classifier, extra_classes: dict[str, int]) -> None:
        if base.embedding_dim is None:
            msg = (
                f"a {type(base).__name__} has no shared embedding for more heads; "
                "choose ffn, mlp, tabnet, bert or perceiver for several label columns"
            )
            raise InputError(msg)
        super().__init__(base.n_genes, base.n_classes, base.params)
        self.base = base
        self.extra_classes = dict(extra_classes)  # label column -> number of classes
        # a list, not a ModuleDict: label columns may hold dots, which module names cannot
        self.heads = nn.ModuleList(nn.Linear(base.embedding_dim, n) for n in extra_classes.values())
        self.capabilities = base.capabilities
        self.sparse_input = base.sparse_input
        self.max_batch_size = base.max_batch_size
        self.steps_per_epoch = base.steps_per_epoch
        self.embedding_dim = base.embedding_dim

    def forward(self, batch) -> ModelOutput:
        out = self.base(batch)
        out.task_logits = {
            name: head(out.embedding)
            for name, head in zip(self.extra_classes, self.heads, strict=True)
        }
        return out

    def explain_batch(self, x):
        return self.base.explain_batch(x)  # the primary label column's head


def with_tasks(module: Classifier, extra_classes: dict[str, int]) -> Classifier:
    """`module` itself for one label column, else wrapped with a head per further column."""
    return MultiTask(module, extra_classes) if extra_classes else module
