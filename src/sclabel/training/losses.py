"""Classification losses the training loop can optimise: `make_loss(name, ...)`.

Every loss takes raw logits (cells x classes) and class indices and returns a scalar. They
are torch modules so the loop can move their class weights to the training device once.

Which to pick (none is best everywhere; compare them with `sclabel train --cv`):

- `weighted_ce` (default): cross-entropy with class weights n / (k * n_c), so rare cell
  types count as much as abundant ones; the scTab/CellTypist practice.
- `ce`: plain cross-entropy; the right choice when classes are balanced already, e.g. by
  `upsample` (then the default).
- `focal`: down-weights cells the model already classifies confidently, so training keeps
  working on the hard and ambiguous ones (closely related subtypes); class weights as alpha.
- `dice`: soft Dice over classes, each class counting equally whatever its size; robust to
  heavy imbalance, used when fine-tuning transformer models for token/cell classification.
- `bce`: one-vs-rest binary cross-entropy; each class is its own yes/no problem, so
  probabilities are not forced to compete (useful when labels overlap or for calibration).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sclabel.config import LOSS_OPTIONS, LOSSES
from sclabel.errors import InputError

__all__ = ["LOSSES", "LOSS_OPTIONS", "make_loss"]


class _Loss(torch.nn.Module):
    """A loss with per-class weights held as a buffer (moved with `.to(device)`)."""

    def __init__(self, class_weight: np.ndarray | torch.Tensor | None, n_classes: int):
        super().__init__()
        if class_weight is None:
            weight = torch.ones(n_classes)
        else:
            weight = torch.as_tensor(np.asarray(class_weight), dtype=torch.float32)
        if weight.shape != (n_classes,):
            msg = f"class_weight has shape {tuple(weight.shape)}; expected ({n_classes},)"
            raise InputError(msg)
        self.register_buffer("weight", weight.clone())
        self.n_classes = n_classes


class CrossEntropy(_Loss):
    """sum_i w_yi (-log softmax(z_i)_yi) / sum_i w_yi (torch's weighted `cross_entropy`).

    With uniform weights this is plain cross-entropy, the mean negative log-likelihood."""

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, weight=self.weight.to(logits.dtype))


class FocalLoss(_Loss):
    """Lin et al. 2017: -alpha_y (1 - p_y)^gamma log p_y, averaged with the alpha weights.

    gamma = 0 is (weighted) cross-entropy; larger gamma shrinks the loss of cells already
    predicted with high p_y, so the gradient concentrates on misclassified and borderline
    cells. Normalised by sum(alpha_y) like torch's weighted cross-entropy, so both agree at
    gamma = 0.
    """

    def __init__(self, class_weight, n_classes: int, gamma: float = 2.0):
        super().__init__(class_weight, n_classes)
        if gamma < 0:
            raise InputError(f"focal gamma must be non-negative, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
        # clamped: d/dp (1 - p)^gamma is infinite at p = 1 when gamma < 1
        modulating = (1 - log_p.exp()).clamp(min=1e-12) ** self.gamma
        alpha = self.weight.to(logits.dtype)[y]
        return -(alpha * modulating * log_p).sum() / alpha.sum().clamp(min=1e-12)


class DiceLoss(_Loss):
    """1 - mean over classes of (2 sum_i p_ic t_ic + s) / (sum_i p_ic + sum_i t_ic + s).

    p = softmax probabilities, t = one-hot labels, over the cells of the batch; `smooth`
    (s) keeps a class absent from the batch finite and rewards predicting none of it.
    Each class counts equally whatever its size, so class weights are not used.
    """

    def __init__(self, class_weight, n_classes: int, smooth: float = 1.0):
        super().__init__(None, n_classes)
        if smooth < 0:
            raise InputError(f"dice smooth must be non-negative, got {smooth}")
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = F.softmax(logits, dim=1)
        t = F.one_hot(y, self.n_classes).to(p.dtype)
        overlap = (p * t).sum(0)
        total = p.sum(0) + t.sum(0)
        dice = (2 * overlap + self.smooth) / (total + self.smooth)
        return 1 - dice.mean()


class OneVsRestBCE(_Loss):
    """sum over classes of binary cross-entropy(sigmoid(z_c), [y == c]), mean over cells.

    Summed over classes (not averaged) so the gradient per cell does not shrink with the
    number of classes. Class weights are not used.
    """

    def __init__(self, class_weight, n_classes: int):
        super().__init__(None, n_classes)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = F.one_hot(y, self.n_classes).to(logits.dtype)
        per_entry = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        return per_entry.sum(1).mean()


def make_loss(
    name: str,
    class_weight: np.ndarray | torch.Tensor | None,
    n_classes: int,
    **options: float,
) -> torch.nn.Module:
    """The loss `name` as a module called as `loss(logits, y) -> scalar`.

    `class_weight` (one per class) is used by `weighted_ce` and, as alpha, by `focal`; the
    other losses ignore it (`ce` is cross-entropy with uniform weights). Options: `gamma`
    for focal (default 2), `smooth` for dice (default 1).
    """
    if name not in LOSS_OPTIONS:
        raise InputError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    unknown = sorted(set(options) - set(LOSS_OPTIONS[name]))
    if unknown:
        allowed = ", ".join(LOSS_OPTIONS[name]) or "none"
        raise InputError(f"loss {name!r} takes no option(s) {unknown}; its options: {allowed}")
    if name == "ce":
        return CrossEntropy(None, n_classes)
    if name == "weighted_ce":
        return CrossEntropy(class_weight, n_classes)
    if name == "focal":
        return FocalLoss(class_weight, n_classes, **options)
    if name == "dice":
        return DiceLoss(class_weight, n_classes, **options)
    return OneVsRestBCE(class_weight, n_classes)
