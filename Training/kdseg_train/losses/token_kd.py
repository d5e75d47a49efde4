"""Encoder token-sequence distillation (after MISTKD, Zhang et al. 2023; only the abstract is public).

Our design: student layer i is paired with teacher layer ``layer_mapping(i)``, the
student tokens go through a learned linear projection D_s -> D_t per pair, and the loss
is the mean squared error to the teacher tokens (token grids resized when different).
The projections are trained with the student (the trainer adds them to the optimiser).
"""

from __future__ import annotations

from typing import Sequence, Tuple

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
    """

    def __init__(self, student_dim: int, teacher_dim: int, student_depth: int, teacher_depth: int) -> None:
        super().__init__()
        self.pairs = layer_mapping(student_depth, teacher_depth)
        self.projections = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in self.pairs)

    def forward(self, student_tokens: Sequence[torch.Tensor], teacher_tokens: Sequence[torch.Tensor],
                student_grid: Tuple[int, int], teacher_grid: Tuple[int, int]) -> torch.Tensor:
        total = student_tokens[0].new_zeros(())
        for projection, (s, t) in zip(self.projections, self.pairs):
            target = _resize_tokens(teacher_tokens[t].detach(), teacher_grid, student_grid)
            total = total + F.mse_loss(projection(student_tokens[s]), target)
        return total / len(self.pairs)
