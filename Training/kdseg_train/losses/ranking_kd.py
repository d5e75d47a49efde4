"""Token importance ranking distillation (after RSKD, Knowledge-Based Systems 2024; only the abstract is public).

Our design: a token's importance is the attention it receives (mean over heads and
queries of the last layer's attention map; TransUNet has no class token). The
teacher's top-k tokens define a target ranking; the student is trained with a
ListNet loss, the cross-entropy between softmax(teacher scores / T) and
softmax(student scores / T) over those k tokens, so it learns the teacher's order.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TokenRankingDistillation", "token_importance"]


def token_importance(attention_mean: torch.Tensor) -> torch.Tensor:
    """Attention received by each token: (B, N, N) head-averaged map -> (B, N), sums to 1."""
    return attention_mean.mean(dim=1)


class TokenRankingDistillation(nn.Module):
    """ListNet loss on the teacher's top-k tokens (importances scaled by N so T is size-independent).

    Args:
        top_k: how many of the teacher's most important tokens to rank.
        temperature: softmax temperature on the scaled importances.
    """

    def __init__(self, top_k: int = 16, temperature: float = 1.0) -> None:
        super().__init__()
        self.top_k, self.temperature = top_k, temperature

    def forward(self, student_attn: torch.Tensor, teacher_attn: torch.Tensor, student_grid: Tuple[int, int],
                teacher_grid: Tuple[int, int]) -> torch.Tensor:
        s_imp = token_importance(student_attn)
        t_imp = token_importance(teacher_attn.detach())
        if tuple(teacher_grid) != tuple(student_grid):
            t_imp = F.interpolate(t_imp.reshape(-1, 1, *teacher_grid), size=student_grid, mode="bilinear",
                                  align_corners=False).flatten(1)
        n = s_imp.shape[1]
        k = min(self.top_k, n)
        top = t_imp.topk(k, dim=1).indices
        target = F.softmax(t_imp.gather(1, top) * n / self.temperature, dim=1)
        log_pred = F.log_softmax(s_imp.gather(1, top) * n / self.temperature, dim=1)
        return -(target * log_pred).sum(1).mean() + (target * target.clamp_min(1e-12).log()).sum(1).mean()
