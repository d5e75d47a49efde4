"""Cascaded upsampler (CUP) decoder of TransUNet."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBnReLU", "DecoderBlock", "CascadedUpsampler"]


class ConvBnReLU(nn.Sequential):
    """3x3 conv (no bias) + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Bilinear x2 upsample, concatenate an optional skip, two ConvBnReLU."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0) -> None:
        super().__init__()
        self.conv1 = ConvBnReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBnReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class CascadedUpsampler(nn.Module):
    """Decoder from the token grid (stride 16) to full resolution.

    Args:
        hidden_size: token width D.
        head_channels: width of the first 3x3 conv on the token grid.
        decoder_channels: widths of the four upsampling blocks.
        skip_channels: CNN skip widths, coarsest first (stride 8, 4, 2).
        n_skip: how many of those skips are used.
    """

    def __init__(self, hidden_size: int, head_channels: int, decoder_channels: Sequence[int],
                 skip_channels: Sequence[int], n_skip: int = 3) -> None:
        super().__init__()
        self.n_skip = n_skip
        self.conv_more = ConvBnReLU(hidden_size, head_channels)
        in_channels = [head_channels] + list(decoder_channels[:-1])
        skips = [c if i < n_skip else 0 for i, c in enumerate(list(skip_channels) + [0])]
        self.blocks = nn.ModuleList(
            DecoderBlock(i, o, s) for i, o, s in zip(in_channels, decoder_channels, skips)
        )

    def forward(self, grid: torch.Tensor, skips: List[torch.Tensor], collect: bool = False):
        x = self.conv_more(grid)
        stages: List[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            skip = skips[index] if index < self.n_skip else None
            x = block(x, skip)
            if collect:
                stages.append(x)
        return x, stages
