"""Attention-map distillation: the student's single SHSA head mimics the teacher's head mean.

Follows the lightweight TransUNet with knowledge distillation (Al Yusuf, Biradar, Lee,
SPIE Real-Time Image Processing and Deep Learning 2025; only the abstract is public: an
SHSA student mimics a TransUNet teacher). The paper leaves the loss open; our design:
the teacher's 12 heads are averaged (one map per layer, as the student has one head),
each query row of the two row-stochastic maps is compared with KL(teacher || student)
and averaged over queries, layers are paired evenly (:func:`layer_mapping`, or an
explicit list), and when the token grids differ the teacher map is resized bilinearly
along both the query and the key axis and its rows renormalised.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import UsageError

__all__ = ["AttentionMapDistillation", "layer_mapping"]


def layer_mapping(student_depth: int, teacher_depth: int,
                  pairs: Optional[Sequence[Sequence[int]]] = None) -> List[Tuple[int, int]]:
    """(student layer, teacher layer) pairs: ``pairs`` checked against the depths, or evenly spaced.

    The default pairs student layer i with teacher layer round((i + 1) * L_t / L_s) - 1,
    so both last layers meet (e.g. 4 -> 12: (0, 2), (1, 5), (2, 8), (3, 11)).

    Raises:
        ValueError: a pair outside the depths, or non-positive depths.
    """
    if student_depth <= 0 or teacher_depth <= 0:
        raise UsageError(f"depths must be positive, got student {student_depth}, teacher {teacher_depth}")
    if pairs is None:
        return [(i, round((i + 1) * teacher_depth / student_depth) - 1) for i in range(student_depth)]
    out = []
    for pair in pairs:
        s, t = (int(v) for v in pair)
        if not (0 <= s < student_depth and 0 <= t < teacher_depth):
            raise UsageError(f"layer pair {tuple(pair)} is outside student depth {student_depth} / teacher depth "
                             f"{teacher_depth} (layers count from 0)")
        out.append((s, t))
    if not out:
        raise UsageError("layer mapping is empty")
    return out


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
        pairs: explicit (student layer, teacher layer) pairs, default evenly spaced.

    Inputs:
        student_attn, teacher_attn: lists of (B, N, N) head-averaged maps per layer.
        student_grid, teacher_grid: token grids (h, w).
    """

    def __init__(self, student_depth: int, teacher_depth: int,
                 pairs: Optional[Sequence[Sequence[int]]] = None) -> None:
        super().__init__()
        self.pairs = layer_mapping(student_depth, teacher_depth, pairs)

    def forward(self, student_attn: Sequence[torch.Tensor], teacher_attn: Sequence[torch.Tensor],
                student_grid: Tuple[int, int], teacher_grid: Tuple[int, int]) -> torch.Tensor:
        total = student_attn[0].new_zeros(())
        for s, t in self.pairs:
            target = _resize_attention(teacher_attn[t].detach(), tuple(teacher_grid), tuple(student_grid))
            log_s = torch.log(student_attn[s].clamp_min(1e-12))
            total = total + (target * (torch.log(target.clamp_min(1e-12)) - log_s)).sum(-1).mean()
        return total / len(self.pairs)
