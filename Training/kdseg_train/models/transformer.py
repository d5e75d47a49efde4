"""ViT encoder of TransUNet: hybrid patch embedding, pre-LN blocks, final LayerNorm."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadSelfAttention, SingleHeadSelfAttention
from .configs import TransUNetConfig

__all__ = ["Mlp", "TransformerBlock", "HybridEmbedding", "TransformerEncoder"]


class Mlp(nn.Module):
    """Two-layer GELU MLP with dropout (ViT)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.xavier_uniform_(self.fc2.weight)
        nn.init.normal_(self.fc1.bias, std=1e-6)
        nn.init.normal_(self.fc2.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: TransUNetConfig) -> None:
        super().__init__()
        dim = cfg.hidden_size
        self.attention_norm = nn.LayerNorm(dim, eps=1e-6)
        if cfg.attention == "mhsa":
            self.attn: nn.Module = MultiHeadSelfAttention(dim, cfg.num_heads, cfg.attention_dropout)
        else:
            self.attn = SingleHeadSelfAttention(dim, cfg.shsa_partial_dim, cfg.shsa_qk_dim,
                                                cfg.attention_dropout)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.dropout)

    def forward(self, x: torch.Tensor, need_weights: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        y, probs = self.attn(self.attention_norm(x), need_weights)
        x = x + y
        x = x + self.ffn(self.ffn_norm(x))
        return x, probs


class HybridEmbedding(nn.Module):
    """1x1 conv from the CNN map to tokens plus learned position embeddings.

    The position table is learned for the grid of ``img_size``; other input sizes
    (multiples of 16) get it bilinearly resized, as the official code does for
    pretrained weights.
    """

    def __init__(self, in_channels: int, dim: int, img_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.grid = img_size // 16
        self.patch_embeddings = nn.Conv2d(in_channels, dim, kernel_size=1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        self.dropout = nn.Dropout(dropout)

    def position_table(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == (self.grid, self.grid):
            return self.position_embeddings
        dim = self.position_embeddings.shape[-1]
        table = self.position_embeddings.reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(1, h * w, dim)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeddings(feature_map)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        return self.dropout(x + self.position_table(h, w))


class TransformerEncoder(nn.Module):
    """Stack of blocks and the final encoder LayerNorm."""

    def __init__(self, cfg: TransUNetConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.depth))
        self.encoder_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-6)

    def forward(self, x: torch.Tensor, collect: bool = False
                ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        tokens: List[torch.Tensor] = []
        attentions: List[torch.Tensor] = []
        for layer in self.layers:
            x, probs = layer(x, need_weights=collect)
            if collect:
                tokens.append(x)
                attentions.append(probs)  # type: ignore[arg-type]
        return self.encoder_norm(x), tokens, attentions
