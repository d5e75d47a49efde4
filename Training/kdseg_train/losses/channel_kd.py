"""Channel-wise distillation, CWD (Shu et al., ICCV 2021, "Channel-wise Knowledge Distillation for Dense Prediction").

Each channel's activation map becomes a distribution over the H*W positions
(softmax with temperature tau); the loss is ``tau^2 / C * sum_c KL(phi(y_t^c) || phi(y_s^c))``,
averaged over the batch. The paper applies it to logits (same C) or, with a 1x1 conv
adapter on the student, to feature maps of different widths; the adapter is built
here from the channel counts given at construction and trains with the student. When
the resolutions differ the teacher map is resized to the student's (bilinear): the
paper does not need this, our student and teacher may be trained at different sizes.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import UsageError

__all__ = ["ChannelWiseDistillation", "channel_distributions"]


def channel_distributions(maps: torch.Tensor, tau: float) -> torch.Tensor:
    """Log-softmax over positions per channel: (B, C, H, W) -> (B, C, H*W)."""
    return F.log_softmax(maps.flatten(2) / tau, dim=-1)


class ChannelWiseDistillation(nn.Module):
    """CWD between a student map and a teacher map.

    Args:
        tau: temperature (paper: 1 for logits, 4 for features).
        student_channels: channels of the student map; with ``teacher_channels``
            different, a learned 1x1 conv adapts the student to the teacher's width.
        teacher_channels: channels of the teacher map.

    Shapes:
        student (B, Cs, H, W), teacher (B, Ct, H', W'). Returns a scalar.
    """

    def __init__(self, tau: float = 1.0, student_channels: Optional[int] = None,
                 teacher_channels: Optional[int] = None) -> None:
        super().__init__()
        if tau <= 0:
            raise UsageError(f"tau must be positive, got {tau}")
        self.tau = float(tau)
        self.adapter: Optional[nn.Module] = None
        if student_channels is not None and teacher_channels is not None and student_channels != teacher_channels:
            self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.adapter is not None:
            student = self.adapter(student)
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(f"channel counts differ ({student.shape[1]} vs {teacher.shape[1]}); build "
                             "ChannelWiseDistillation with student_channels and teacher_channels to add an adapter")
        if teacher.shape[-2:] != student.shape[-2:]:
            teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
        log_s = channel_distributions(student, self.tau)
        log_t = channel_distributions(teacher.detach(), self.tau)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, C)
        return self.tau ** 2 * kl.sum(1).mean() / student.shape[1]
