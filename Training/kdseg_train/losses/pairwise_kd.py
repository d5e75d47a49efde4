"""Pair-wise affinity distillation (Liu et al., CVPR 2019, "Structured Knowledge Distillation for Semantic Segmentation")."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PairwiseAffinityDistillation", "pairwise_affinity"]


def pairwise_affinity(features: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Cosine similarity between all pairs of positions after average pooling to ``grid``: (B, N, N)."""
    pooled = F.adaptive_avg_pool2d(features, grid).flatten(2)  # (B, C, N)
    pooled = F.normalize(pooled, dim=1)
    return pooled.transpose(1, 2) @ pooled


class PairwiseAffinityDistillation(nn.Module):
    """``sum_ij (a_t - a_s)^2 / N^2`` averaged over the batch; no channel matching needed.

    The paper pools features into nodes of a fixed size; here both maps are pooled to
    the same ``grid`` (our choice: 16 x 16 nodes), so student and teacher of any width
    and resolution are comparable.

    Shapes:
        student (B, Cs, Hs, Ws), teacher (B, Ct, Ht, Wt).
    """

    def __init__(self, grid: Tuple[int, int] = (16, 16)) -> None:
        super().__init__()
        self.grid = tuple(grid)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        a_s = pairwise_affinity(student, self.grid)
        a_t = pairwise_affinity(teacher.detach(), self.grid)
        n = a_s.shape[-1]
        return ((a_t - a_s) ** 2).sum(dim=(1, 2)).mean() / (n * n)
