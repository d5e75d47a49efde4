"""Encoder token-sequence distillation, after MISTKD (Zhang et al. 2023, "MISTKD: Medical Image
Segmentation with Transformer-based Knowledge Distillation"; only the abstract is public:
losses between the teacher's and the student's encoder token sequences, student at 1/8
of the parameters).

What the abstract leaves open is our design: student layer i is paired with a teacher
layer (:func:`~.attention_kd.layer_mapping`, evenly spaced by default or an explicit
list), the student tokens go through a learned linear projection D_s -> D_t per pair
(a student narrower than the teacher cannot match its tokens otherwise), and the loss
is the mean squared error to the teacher tokens, averaged over pairs. Token grids that
differ (other input sizes) are matched by bilinear resizing of the teacher's token map.
The projections train with the student (their parameters are the criterion's).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention_kd import layer_mapping

__all__ = ["TokenSequenceDistillation"]


def _resize_tokens(tokens: torch.Tensor, src: Tuple[int, int], dst: Tuple[int, int]) -> torch.Tensor:
    if tuple(src) == tuple(dst):
        return tokens
    b, n, d = tokens.shape
    grid = tokens.transpose(1, 2).reshape(b, d, *src)
    return F.interpolate(grid, size=dst, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)


class TokenSequenceDistillation(nn.Module):
    """Mean over paired layers of MSE(proj(student tokens), teacher tokens).

    Args:
        student_dim / teacher_dim: token widths D_s, D_t.
        student_depth / teacher_depth: transformer layers.
        pairs: explicit (student layer, teacher layer) pairs, default evenly spaced.

    Inputs:
        student_tokens, teacher_tokens: lists of (B, N, D) per layer; grids (h, w).
    """

    def __init__(self, student_dim: int, teacher_dim: int, student_depth: int, teacher_depth: int,
                 pairs: Optional[Sequence[Sequence[int]]] = None) -> None:
        super().__init__()
        self.pairs = layer_mapping(student_depth, teacher_depth, pairs)
        self.projections = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in self.pairs)
        if student_dim == teacher_dim:
            # Start from the identity: equal token sequences then cost nothing from the first step.
            for projection in self.projections:
                nn.init.eye_(projection.weight)
                nn.init.zeros_(projection.bias)

    def forward(self, student_tokens: Sequence[torch.Tensor], teacher_tokens: Sequence[torch.Tensor],
                student_grid: Tuple[int, int], teacher_grid: Tuple[int, int]) -> torch.Tensor:
        total = student_tokens[0].new_zeros(())
        for projection, (s, t) in zip(self.projections, self.pairs):
            target = _resize_tokens(teacher_tokens[t].detach(), teacher_grid, student_grid)
            total = total + F.mse_loss(projection(student_tokens[s]), target)
        return total / len(self.pairs)
