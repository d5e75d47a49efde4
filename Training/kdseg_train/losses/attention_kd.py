"""Attention-map distillation: the student's single SHSA head mimics the teacher's head mean.

Follows the lightweight-TransUNet idea (Al Yusuf et al. 2025; only the abstract is
public): our design compares row-stochastic attention maps with a KL divergence per
query, pairs student layers with teacher layers evenly (student layer i <- teacher
layer round((i + 1) * L_t / L_s) - 1), and resizes maps bilinearly along both token
axes when the token grids differ.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionMapDistillation", "layer_mapping"]


def layer_mapping(student_depth: int, teacher_depth: int) -> List[Tuple[int, int]]:
    """Evenly spaced (student layer, teacher layer) pairs ending at both last layers."""
    return [(i, round((i + 1) * teacher_depth / student_depth) - 1) for i in range(student_depth)]


def _resize_attention(attn: torch.Tensor, src: Tuple[int, int], dst: Tuple[int, int]) -> torch.Tensor:
    """Resize (B, N, N) maps from grid ``src`` to ``dst`` on both axes; rows renormalised."""
    if src == dst:
        return attn
    b = attn.shape[0]
    (sh, sw), (dh, dw) = src, dst
    keys = attn.reshape(b * sh * sw, 1, sh, sw)
    keys = F.interpolate(keys, size=(dh, dw), mode="bilinear", align_corners=False).reshape(b, sh * sw, dh * dw)
    queries = keys.transpose(1, 2).reshape(b * dh * dw, 1, sh, sw)
    queries = F.interpolate(queries, size=(dh, dw), mode="bilinear", align_corners=False)
    out = queries.reshape(b, dh * dw, dh * dw).transpose(1, 2)
    return out / out.sum(dim=-1, keepdim=True).clamp_min(1e-12)


class AttentionMapDistillation(nn.Module):
    """Mean over mapped layers of KL(teacher head-mean row || student head-mean row).

    Args:
        student_depth / teacher_depth: transformer layers of each network.

    Inputs:
        student_attn, teacher_attn: lists of (B, N, N) head-averaged maps per layer.
        student_grid, teacher_grid: token grids (h, w).
    """

    def __init__(self, student_depth: int, teacher_depth: int) -> None:
        super().__init__()
        self.pairs = layer_mapping(student_depth, teacher_depth)

    def forward(self, student_attn: Sequence[torch.Tensor], teacher_attn: Sequence[torch.Tensor],
                student_grid: Tuple[int, int], teacher_grid: Tuple[int, int]) -> torch.Tensor:
        total = student_attn[0].new_zeros(())
        for s, t in self.pairs:
            target = _resize_attention(teacher_attn[t].detach(), tuple(teacher_grid), tuple(student_grid))
            log_s = torch.log(student_attn[s].clamp_min(1e-12))
            total = total + (target * (torch.log(target.clamp_min(1e-12)) - log_s)).sum(-1).mean()
        return total / len(self.pairs)
