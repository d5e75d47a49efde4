"""Pixel-wise KD on partially labelled data: the teacher fills in what the labels leave open.

On a merged-background voxel of a partially labelled case (background or an organ the
case does not label, see :mod:`kdseg_train.data.partial_targets`) the labels say which
classes are impossible (the organs the case labels) but not which of the others it is.
The teacher's tempered distribution, with the impossible classes removed and the rest
renormalised, is the target there: the teacher supplies the unlabelled organs, the
labels veto its mistakes on the labelled ones. Everywhere else the target is the
teacher's plain distribution, so on fully labelled data this term equals
:class:`~kdseg_train.losses.pixel_kd.PixelKLDivergence` (Hinton et al. 2015) exactly.
Our design: Shi et al. 2021 distil no teacher.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data.partial_targets import allowed_classes
from ..errors import UsageError

__all__ = ["PartialLabelPixelKD"]


class PartialLabelPixelKD(nn.Module):
    """``T^2 * KL(q || softmax(z_s / T))`` averaged over pixels, q = the label-constrained teacher.

    Args:
        temperature: T (EMKD: 4).

    Shapes:
        student_logits (B, C, H, W), teacher_logits (B, C, H', W') (resized to the
        student's size), labels (B, H, W) targets with merged-background codes, valid
        (B, H, W) bool or None: pixels cached teacher logits cover (mean over those only).
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise UsageError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        if teacher_logits.shape[-2:] != student_logits.shape[-2:]:
            teacher_logits = F.interpolate(teacher_logits, size=student_logits.shape[-2:], mode="bilinear",
                                           align_corners=False)
        if labels.shape[-2:] != student_logits.shape[-2:]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match the student's logits "
                             f"{tuple(student_logits.shape)}")
        t = self.temperature
        allowed = allowed_classes(labels, student_logits.shape[1])
        merged = allowed.sum(dim=1, keepdim=True) > 1
        keep = torch.where(merged, allowed, torch.ones_like(allowed))
        log_q = F.log_softmax((teacher_logits.detach() / t).masked_fill(~keep, float("-inf")), dim=1)
        q = log_q.exp()
        log_p_s = F.log_softmax(student_logits / t, dim=1)
        # 0 * log 0 := 0 for the vetoed classes.
        kl = (q * (torch.where(keep, log_q, torch.zeros_like(log_q)) - log_p_s)).sum(dim=1)
        if valid is None:
            return kl.mean() * t * t
        weight = valid.to(kl.dtype)
        return (kl * weight).sum() / weight.sum().clamp_min(1.0) * t * t
