"""Self-attention over a token sequence: multi-head (ViT) and single-head (SHViT SHSA)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import UsageError

__all__ = ["MultiHeadSelfAttention", "SingleHeadSelfAttention"]


class MultiHeadSelfAttention(nn.Module):
    """ViT multi-head self-attention with separate q/k/v projections (TransUNet's layout).

    Args:
        dim: token width D.
        num_heads: heads; D must be divisible by it.
        attention_dropout: dropout on attention probabilities.
        dropout: dropout after the output projection.

    Shapes:
        x (B, N, D) -> (B, N, D); attention probabilities (B, num_heads, N, N).
    """

    def __init__(self, dim: int, num_heads: int = 12, attention_dropout: float = 0.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise UsageError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attention_dropout)
        self.proj_drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, need_weights: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        if need_weights:
            probs: Optional[torch.Tensor] = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim ** -0.5, dim=-1)
            y = self.attn_drop(probs) @ v
        else:
            # Fused kernel: no (B, heads, N, N) tensor is kept when nobody asked for it.
            probs = None
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(x.shape)
        return self.proj_drop(self.out(y)), probs


class SingleHeadSelfAttention(nn.Module):
    """Single-head self-attention on a partial channel slice (Yun & Ro, SHViT, CVPR 2024).

    The first ``partial_dim`` channels are GroupNorm-ed (one group) and attended by one
    head with ``qk_dim``-wide queries and keys; the other channels pass through
    untouched; the two are concatenated, ReLU-ed and projected back to D. SHViT works
    on 2D maps with 1x1 conv + BN; on a token sequence the same maps are linear layers
    (BN after a 1x1 conv folds into the linear layer at inference).

    Args:
        dim: token width D.
        partial_dim: channels given to the head (SHViT: about D / 4.67).
        qk_dim: query/key width (SHViT: 16).
        attention_dropout: dropout on attention probabilities.
        dropout: dropout after the output projection.

    Shapes:
        x (B, N, D) -> (B, N, D); attention probabilities (B, 1, N, N).
    """

    def __init__(self, dim: int, partial_dim: int, qk_dim: int = 16, attention_dropout: float = 0.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not 0 < partial_dim <= dim:
            raise UsageError(f"partial_dim must be in 1..{dim}, got {partial_dim}")
        self.partial_dim = partial_dim
        self.qk_dim = qk_dim
        self.norm = nn.GroupNorm(1, partial_dim)
        self.qkv = nn.Linear(partial_dim, 2 * qk_dim + partial_dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attention_dropout)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, need_weights: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        part, rest = x[..., : self.partial_dim], x[..., self.partial_dim:]
        # GroupNorm(1) normalises over channels and tokens of each sample, as on SHViT's 2D map.
        part = self.norm(part.transpose(1, 2)).transpose(1, 2)
        q, k, v = self.qkv(part).split([self.qk_dim, self.qk_dim, self.partial_dim], dim=-1)
        if need_weights:
            attn = torch.softmax(q @ k.transpose(-2, -1) * self.qk_dim ** -0.5, dim=-1)
            probs: Optional[torch.Tensor] = attn.unsqueeze(1)
            attended = self.attn_drop(attn) @ v
        else:
            probs = None
            # 4D (B, 1, N, E) as the ONNX exporters' attention translations expect.
            attended = F.scaled_dot_product_attention(
                q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1),
                dropout_p=self.attn_drop.p if self.training else 0.0).squeeze(1)
        y = self.proj(F.relu(torch.cat([attended, rest], dim=-1)))
        return self.proj_drop(y), probs
