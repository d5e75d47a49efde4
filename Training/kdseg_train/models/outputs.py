"""Typed result of a forward pass with distillation taps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch

__all__ = ["TransUNetOutput"]


@dataclass
class TransUNetOutput:
    """Logits plus the intermediate features knowledge-distillation losses compare.

    Attributes:
        logits: (B, C, H, W).
        skips: CNN skip maps, coarsest first: (B, 8w, H/8, W/8), (B, 4w, H/4, W/4), (B, w, H/2, W/2).
        encoder_map: CNN output before the patch embedding, (B, 16w, H/16, W/16).
        tokens: one (B, N, D) sequence per transformer layer (N = H/16 * W/16), before
            the final encoder LayerNorm.
        attentions: one (B, heads, N, N) attention-probability tensor per layer
            (heads = 1 for SHSA); rows are queries and sum to one.
        attention_mean: one (B, N, N) head-average per layer.
        decoder_features: output of each of the four decoder blocks, coarse to fine
            (strides 8, 4, 2, 1).
        grid: token grid (H/16, W/16).
    """

    logits: torch.Tensor
    skips: List[torch.Tensor] = field(default_factory=list)
    encoder_map: torch.Tensor = None  # type: ignore[assignment]
    tokens: List[torch.Tensor] = field(default_factory=list)
    attentions: List[torch.Tensor] = field(default_factory=list)
    attention_mean: List[torch.Tensor] = field(default_factory=list)
    decoder_features: List[torch.Tensor] = field(default_factory=list)
    grid: Tuple[int, int] = (0, 0)
