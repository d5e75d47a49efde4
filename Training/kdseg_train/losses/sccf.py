"""Multi-stage spatial + channel attention distillation, after the Space Channel Cascade Fusion (SCCF)
of RSKD (Knowledge-Based Systems 2024; only the abstract is public: multi-stage spatial and
channel distillation fused in a cascade).

Our design for what the abstract leaves open:

- stages: pairs of student/teacher feature maps (by default the four decoder stages,
  coarse to fine);
- spatial attention of a stage: ``softmax_HW(mean_c F^2 / tau)``, a distribution over
  positions, independent of the channel count;
- cascade fusion: the spatial attention of stage i is fused with the (bilinearly
  upsampled) fused attention of stage i-1, ``A_i' = normalise((A_i + up(A_{i-1}')) / 2)``,
  so coarse semantic focus guides the finer stages, identically for student and teacher;
- channel attention of a stage: ``softmax_C(GAP(adapter(F_s)) / tau)`` against
  ``softmax_C(GAP(F_t) / tau)`` where the learned 1x1 adapter maps the student's
  channels to the teacher's (needed when widths differ; identity-initialised when equal);
- loss per stage: ``tau^2 * (KL(A_t' || A_s') + KL(c_t || c_s))``, averaged over stages
  and the batch. Student maps are resized to the teacher's resolution when they differ.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import UsageError

__all__ = ["SpaceChannelCascadeDistillation", "spatial_attention"]


def spatial_attention(features: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Distribution over positions from the channel-mean energy: (B, C, H, W) -> (B, 1, H, W), sums to 1."""
    energy = features.pow(2).mean(dim=1, keepdim=True)
    # Normalise the scale so tau means the same thing for features of any magnitude.
    energy = energy / energy.flatten(1).mean(dim=1).clamp_min(1e-12)[:, None, None, None]
    b, _, h, w = energy.shape
    return F.softmax(energy.flatten(1) / tau, dim=1).reshape(b, 1, h, w)


def _kl(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """KL(target || pred) per sample for distributions flattened on dim 1."""
    t, p = target.flatten(1), pred.flatten(1)
    return (t * (t.clamp_min(1e-12).log() - p.clamp_min(1e-12).log())).sum(1)


class SpaceChannelCascadeDistillation(nn.Module):
    """Cascade-fused spatial attention + channel attention distillation over several stages.

    Args:
        student_channels: channels of each student stage.
        teacher_channels: channels of each teacher stage (same number of stages).
        tau: softmax temperature of both attentions.
        spatial_weight / channel_weight: weights of the two parts.

    Inputs:
        student, teacher: lists of (B, C, H, W) maps, one per stage, coarse to fine.
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], tau: float = 1.0,
                 spatial_weight: float = 1.0, channel_weight: float = 1.0) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels) or not student_channels:
            raise UsageError(f"need the same non-zero number of stages, got student {list(student_channels)} and "
                             f"teacher {list(teacher_channels)}")
        if tau <= 0:
            raise UsageError(f"tau must be positive, got {tau}")
        self.tau, self.spatial_weight, self.channel_weight = float(tau), float(spatial_weight), float(channel_weight)
        adapters = []
        for cs, ct in zip(student_channels, teacher_channels):
            conv = nn.Conv2d(int(cs), int(ct), kernel_size=1)
            if cs == ct:
                nn.init.dirac_(conv.weight)
                nn.init.zeros_(conv.bias)
            adapters.append(conv)
        self.adapters = nn.ModuleList(adapters)

    def _cascade(self, maps: Sequence[torch.Tensor], sizes: Sequence[torch.Size]) -> List[torch.Tensor]:
        fused: List[torch.Tensor] = []
        previous: Optional[torch.Tensor] = None
        for features, size in zip(maps, sizes):
            if features.shape[-2:] != size:
                features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
            attention = spatial_attention(features, self.tau)
            if previous is not None:
                up = F.interpolate(previous, size=size, mode="bilinear", align_corners=False)
                up = up / up.flatten(1).sum(1).clamp_min(1e-12)[:, None, None, None]
                attention = 0.5 * (attention + up)
            fused.append(attention)
            previous = attention
        return fused

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(student) != len(self.adapters) or len(teacher) != len(self.adapters):
            raise ValueError(f"expected {len(self.adapters)} stages, got {len(student)} student and {len(teacher)} "
                             "teacher maps")
        teacher = [t.detach() for t in teacher]
        sizes = [t.shape[-2:] for t in teacher]
        spatial_s, spatial_t = self._cascade(student, sizes), self._cascade(teacher, sizes)
        total = student[0].new_zeros(())
        for adapter, s, t, a_s, a_t in zip(self.adapters, student, teacher, spatial_s, spatial_t):
            c_s = F.softmax(adapter(s).mean(dim=(2, 3)) / self.tau, dim=1)
            c_t = F.softmax(t.mean(dim=(2, 3)) / self.tau, dim=1)
            stage = self.spatial_weight * _kl(a_t, a_s) + self.channel_weight * _kl(c_t, c_s)
            total = total + stage.mean()
        return self.tau ** 2 * total / len(self.adapters)
