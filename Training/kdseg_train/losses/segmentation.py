"""Segmentation loss of TransUNet: 0.5 * cross-entropy + 0.5 * soft Dice (MONAI), with ignore."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from ..data.label_maps import IGNORE_INDEX

__all__ = ["SegmentationLoss"]


class SegmentationLoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice`` over all classes including background.

    Voxels labelled ``ignore_index`` contribute to neither term (the Dice term masks
    them out of both prediction and target).

    Args:
        num_classes: C.
        ce_weight / dice_weight: 0.5 / 0.5 as in TransUNet.
        ignore_index: label of unknown voxels.

    Shapes:
        logits (B, C, H, W), target (B, H, W) int64.
    """

    def __init__(self, num_classes: int, ce_weight: float = 0.5, dice_weight: float = 0.5,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        # TransUNet's Dice: softmax, all classes, smooth 1e-5, mean over classes.
        self.dice = DiceLoss(include_background=True, to_onehot_y=False, softmax=False,
                             smooth_nr=1e-5, smooth_dr=1e-5, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got logits of shape {tuple(logits.shape)}")
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        valid = (target != self.ignore_index).unsqueeze(1).to(logits.dtype)
        safe = torch.where(target == self.ignore_index, torch.zeros_like(target), target)
        onehot = F.one_hot(safe, self.num_classes).permute(0, 3, 1, 2).to(logits.dtype)
        probs = torch.softmax(logits, dim=1)
        dice = self.dice(probs * valid, onehot * valid)
        return self.ce_weight * ce + self.dice_weight * dice
