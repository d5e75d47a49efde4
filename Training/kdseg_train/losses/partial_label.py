"""Marginal and exclusion losses for partially labelled data (Shi et al., "Marginal loss and exclusion loss
for partially supervised multi-organ segmentation", Medical Image Analysis 2021).

A case that labels only some organs cannot say whether its background voxel is
background or an organ it does not label. The *marginal* loss scores the probability of
that whole set, ``p_0 + sum_u p_u``, instead of ``p_0`` alone: moving probability between
background and an unlabelled organ there changes nothing. The *exclusion* loss uses what
the case does know: a voxel is not any labelled organ it is not marked as, so the
probability of such an organ there is penalised (Dice overlap with the exclusion region,
and ``-log(1 - p_c)``).

With targets from :mod:`kdseg_train.data.partial_targets` (fully known, ignored, or
merged background) the supervised loss is

    ce_weight * (marginal CE + exclusion_weight * exclusion CE)
      + dice_weight * (marginal Dice + exclusion_weight * exclusion Dice)

With every voxel fully known and ``exclusion_weight`` 0 it equals TransUNet's
``0.5 CE + 0.5 Dice`` (:class:`~kdseg_train.losses.segmentation.SegmentationLoss`), batch
Dice over all classes with smooth 1e-5, exactly. The paper sums the four terms with equal
weights; here they follow the CE/Dice weights of the recipe.
"""

from __future__ import annotations

from typing import Dict

import torch
from monai.losses import DiceLoss
from torch import nn

from ..data.partial_targets import allowed_classes
from ..errors import UsageError

__all__ = ["PartialLabelLoss", "marginal_cross_entropy", "exclusion_terms"]


def _masked_logsumexp(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits.masked_fill(~mask, float("-inf")), dim=1)


def marginal_cross_entropy(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``-log sum_{c allowed} p_c`` averaged over voxels with any allowed class.

    Shapes:
        logits (B, C, ...), allowed (B, C, ...) bool. Returns a scalar.
    """
    valid = allowed.any(dim=1)
    safe = allowed | ~valid.unsqueeze(1)  # ignored voxels: any finite value, dropped below
    nll = torch.logsumexp(logits, dim=1) - _masked_logsumexp(logits, safe)
    return nll[valid].mean()


def exclusion_terms(logits: torch.Tensor, allowed: torch.Tensor, smooth: float = 1e-5) -> Dict[str, torch.Tensor]:
    """Exclusion CE and Dice of the organ classes (1..C-1).

    The exclusion region of organ c is where the target says "not c": voxels known to be
    another class, and merged-background voxels of cases that label c. Voxels where c is
    possible but unknown (merged background with c unlabelled) take no part.

    Returns:
        ``{"ce": mean over voxels of -sum_c e_c log(1 - p_c), "dice": mean over organs of
        (2 sum e_c p_c + s) / (sum e_c + sum p_c + s)}`` (both are 0 for a perfect prediction).
    """
    valid = allowed.any(dim=1, keepdim=True)
    known = allowed.sum(dim=1, keepdim=True) == 1
    # c is decided at a voxel when the voxel is fully known, or c is excluded from its merged set.
    decided = valid & (known | ~allowed)
    exclusion = (decided & ~allowed)[:, 1:].to(logits.dtype)
    decided = decided.expand_as(allowed)[:, 1:].to(logits.dtype)
    log_z = torch.logsumexp(logits, dim=1, keepdim=True)
    classes = logits.shape[1]
    eye = torch.eye(classes, dtype=torch.bool, device=logits.device)
    shape = (1, classes) + (1,) * (logits.ndim - 2)
    log_not = torch.stack([_masked_logsumexp(logits, ~eye[c].view(shape).expand_as(logits))
                           for c in range(1, classes)], dim=1) - log_z  # log(1 - p_c), stable
    count = valid.sum().clamp_min(1)
    ce = -(exclusion * log_not).sum() / count
    probs = torch.softmax(logits, dim=1)[:, 1:] * decided
    dims = [0] + list(range(2, logits.ndim))
    inter = (exclusion * probs).sum(dim=dims)
    dice = (2 * inter + smooth) / (exclusion.sum(dim=dims) + probs.sum(dim=dims) + smooth)
    return {"ce": ce, "dice": dice.mean()}


class PartialLabelLoss(nn.Module):
    """Marginal CE + marginal Dice (+ exclusion CE and Dice) on targets with merged background.

    Args:
        num_classes: C.
        ce_weight, dice_weight: weights of the CE and Dice families (TransUNet: 0.5, 0.5).
        exclusion_weight: weight of the exclusion terms relative to the marginal ones (paper: 1).
        smooth: Dice smoothing (TransUNet: 1e-5).

    Shapes:
        logits (B, C, H, W), target (B, H, W) int64 (class ids, ``IGNORE_INDEX``, or
        merged-background codes). Returns a scalar.
    """

    def __init__(self, num_classes: int, ce_weight: float = 0.5, dice_weight: float = 0.5,
                 exclusion_weight: float = 1.0, smooth: float = 1e-5) -> None:
        super().__init__()
        if num_classes < 2:
            raise UsageError(f"num_classes must be >= 2, got {num_classes}")
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise UsageError(f"ce_weight and dice_weight must be >= 0 and not both 0, got {ce_weight}, {dice_weight}")
        if exclusion_weight < 0:
            raise UsageError(f"exclusion_weight must be >= 0, got {exclusion_weight}")
        self.num_classes = num_classes
        self.ce_weight, self.dice_weight = float(ce_weight), float(dice_weight)
        self.exclusion_weight = float(exclusion_weight)
        self.smooth = smooth
        self.dice = DiceLoss(include_background=True, to_onehot_y=False, softmax=False, smooth_nr=smooth,
                             smooth_dr=smooth, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits (B, {self.num_classes}, ...), got {tuple(logits.shape)}")
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        allowed = allowed_classes(target, self.num_classes)
        valid = allowed.any(dim=1, keepdim=True)
        if not bool(valid.any()):
            return logits.sum() * 0.0  # nothing known in this batch
        loss = self.ce_weight * marginal_cross_entropy(logits, allowed)
        probs = torch.softmax(logits, dim=1)
        merged = allowed.sum(dim=1, keepdim=True) > 1
        # Merged voxels: background's prediction is the whole set's probability, its target 1;
        # the unlabelled organs of the set take no part in their own class's Dice there.
        background = torch.where(merged, (probs * allowed).sum(dim=1, keepdim=True), probs[:, :1])
        prediction = torch.cat([background, probs[:, 1:]], dim=1)
        target_onehot = torch.where(merged, torch.zeros_like(allowed), allowed)
        target_onehot[:, :1] |= merged
        counted = valid & ~(merged & allowed & (torch.arange(self.num_classes, device=logits.device)
                                                .view(1, -1, *([1] * (logits.ndim - 2))) > 0))
        counted = counted.to(logits.dtype)
        loss = loss + self.dice_weight * self.dice(prediction * counted, target_onehot.to(logits.dtype) * counted)
        if self.exclusion_weight:
            exclusion = exclusion_terms(logits, allowed, self.smooth)
            loss = loss + self.exclusion_weight * (self.ce_weight * exclusion["ce"]
                                                   + self.dice_weight * exclusion["dice"])
        return loss
