"""Channel-wise distillation (Shu et al., ICCV 2021, "Channel-wise Knowledge Distillation for Dense Prediction")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelWiseDistillation"]


class ChannelWiseDistillation(nn.Module):
    """``tau^2 / C * sum_c KL(softmax_HW(y_t^c / tau) || softmax_HW(y_s^c / tau))``, mean over the batch.

    Each channel's activation map is turned into a distribution over the H*W positions.
    Applied to logits (C equal for student and teacher, the paper's segmentation
    setting); teacher maps are resized to the student's resolution when they differ.

    Shapes:
        student, teacher: (B, C, H, W).
    """

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = tau

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(f"channel counts differ ({student.shape[1]} vs {teacher.shape[1]}); CWD on logits "
                             "needs the same classes")
        if teacher.shape[-2:] != student.shape[-2:]:
            teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
        b, c = student.shape[:2]
        log_s = F.log_softmax(student.reshape(b, c, -1) / self.tau, dim=-1)
        log_t = F.log_softmax(teacher.detach().reshape(b, c, -1) / self.tau, dim=-1)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, C)
        return self.tau ** 2 * kl.sum(1).mean() / c
