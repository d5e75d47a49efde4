"""Segmentation loss of TransUNet: 0.5 * cross-entropy + 0.5 * soft Dice (MONAI), with an ignore label.

TransUNet (Chen et al. 2021, official ``trainer.py`` / ``utils.DiceLoss``) trains with
``0.5 * CE + 0.5 * Dice`` where the Dice is computed on softmax probabilities for every
class including background, over the whole batch, smooth 1e-5, and averaged over
classes. Our addition: voxels labelled ``ignore_index`` (organs a dataset does not
annotate) count in neither term; the Dice term masks them out of both prediction and
target, so a partially annotated dataset never teaches "background" where an organ may be.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from ..data.label_maps import IGNORE_INDEX
from ..errors import UsageError

__all__ = ["SegmentationLoss"]


class SegmentationLoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice`` over all classes including background.

    Args:
        num_classes: C.
        ce_weight: weight of the cross-entropy (TransUNet: 0.5).
        dice_weight: weight of the soft Dice loss (TransUNet: 0.5).
        ignore_index: label of unknown voxels.
        smooth: Dice smoothing in numerator and denominator (TransUNet: 1e-5).

    Shapes:
        logits (B, C, H, W) (or (B, C, D, H, W)), target (B, H, W) int64 with values in
        [0, C) or ``ignore_index``. Returns a scalar.
    """

    def __init__(self, num_classes: int, ce_weight: float = 0.5, dice_weight: float = 0.5,
                 ignore_index: int = IGNORE_INDEX, smooth: float = 1e-5) -> None:
        super().__init__()
        if num_classes < 2:
            raise UsageError(f"num_classes must be >= 2 (background + one class), got {num_classes}")
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise UsageError(f"ce_weight and dice_weight must be >= 0 and not both 0, got {ce_weight}, {dice_weight}")
        if 0 <= ignore_index < num_classes:
            raise UsageError(f"ignore_index {ignore_index} is a real class of {num_classes}")
        self.num_classes = num_classes
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.ignore_index = ignore_index
        # TransUNet's Dice: softmax probabilities, all classes, intersection/union summed over the batch.
        self.dice = DiceLoss(include_background=True, to_onehot_y=False, softmax=False, smooth_nr=smooth,
                             smooth_dr=smooth, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits (B, {self.num_classes}, ...), got {tuple(logits.shape)}")
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)} "
                             "(expected (B, H, W) class ids)")
        target = target.long()
        ignored = target == self.ignore_index
        safe = torch.where(ignored, torch.zeros_like(target), target)
        if safe.numel() and (int(safe.min()) < 0 or int(safe.max()) >= self.num_classes):
            bad = int(safe.max()) if int(safe.max()) >= self.num_classes else int(safe.min())
            raise UsageError(f"label value {bad} is outside 0..{self.num_classes - 1} (and is not the ignore value "
                             f"{self.ignore_index}); check num_classes and the label remap")
        valid = (~ignored).unsqueeze(1).to(logits.dtype)
        if bool(ignored.all()):
            return logits.sum() * 0.0  # nothing known in this batch: no signal, but a graph for backward
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        onehot = F.one_hot(safe, self.num_classes).movedim(-1, 1).to(logits.dtype)
        probs = torch.softmax(logits, dim=1)
        dice = self.dice(probs * valid, onehot * valid)
        return self.ce_weight * ce + self.dice_weight * dice
