"""Typed result of a forward pass with distillation taps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch

__all__ = ["TransUNetOutput"]


@dataclass
class TransUNetOutput:
    """Logits plus the intermediate features knowledge-distillation losses compare.

    Returned by ``model(x, return_features=True)``; a plain ``model(x)`` returns the logits
    tensor only and computes none of the taps (no attention matrix is materialised: the
    fused attention kernel runs instead). Shapes for an input (B, C, H, W), CNN width w
    (64 in the teacher), token width D, grid h, w = H/16, W/16 and N = h * w tokens:

    Attributes:
        logits: (B, num_classes, H, W), pre-softmax.
        skips: CNN skip maps, coarsest first (the order the decoder consumes them):
            (B, 8w, H/8, W/8), (B, 4w, H/4, W/4), (B, w, H/2, W/2).
        encoder_map: CNN output before the patch embedding, (B, 16w, h, w).
        tokens: one (B, N, D) sequence per transformer layer, in layer order, each the
            output of its block (residual stream, before the final encoder LayerNorm).
            Tokens are in row-major grid order: token i is at (i // w, i % w).
        attentions: one (B, heads, N, N) attention-probability tensor per layer, rows are
            queries and sum to one; heads = num_heads for MHSA and 1 for SHSA.
        attention_mean: one (B, N, N) head average per layer (equal to the single head for SHSA).
        decoder_features: output of each of the four decoder blocks, coarse to fine:
            (B, c_i, H/8, W/8), (B, c_i, H/4, W/4), (B, c_i, H/2, W/2), (B, c_i, H, W) with
            c_i the config's ``decoder_channels`` (teacher: 256, 128, 64, 16).
        grid: the token grid (h, w).
    """

    logits: torch.Tensor
    skips: List[torch.Tensor] = field(default_factory=list)
    encoder_map: torch.Tensor = None  # type: ignore[assignment]
    tokens: List[torch.Tensor] = field(default_factory=list)
    attentions: List[torch.Tensor] = field(default_factory=list)
    attention_mean: List[torch.Tensor] = field(default_factory=list)
    decoder_features: List[torch.Tensor] = field(default_factory=list)
    grid: Tuple[int, int] = (0, 0)
