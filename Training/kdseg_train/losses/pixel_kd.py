"""Pixel-wise logit distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network")."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import UsageError

__all__ = ["PixelKLDivergence"]


class PixelKLDivergence(nn.Module):
    """``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` summed over classes, averaged over pixels.

    EMKD uses T = 4; structured KD uses T = 1. Teacher logits are resized to the
    student's resolution when they differ. With ``valid`` (teacher logits cached and moved
    by augmentation, see ``kdseg_train.logit_cache``) the mean runs over valid pixels only.

    Shapes:
        student_logits, teacher_logits (B, C, H, W); valid (B, H, W) bool or None.
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise UsageError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        if teacher_logits.shape[-2:] != student_logits.shape[-2:]:
            teacher_logits = F.interpolate(teacher_logits, size=student_logits.shape[-2:], mode="bilinear",
                                           align_corners=False)
        t = self.temperature
        log_p_s = F.log_softmax(student_logits / t, dim=1)
        log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
        if valid is None:
            return kl.mean() * t * t
        if valid.shape != kl.shape:
            raise ValueError(f"valid mask {tuple(valid.shape)} must be (B, H, W) = {tuple(kl.shape)}")
        weight = valid.to(kl.dtype)
        return (kl * weight).sum() / weight.sum().clamp_min(1.0) * t * t
