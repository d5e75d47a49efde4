"""ResNetV2 hybrid stem of TransUNet: weight-standardised convolutions with GroupNorm(32).

``norm="batch"`` swaps every GroupNorm for BatchNorm (a student option): at inference a
BatchNorm is folded into the convolution before it, so the exported encoder is plain
convolutions, whereas GroupNorm computes per-sample statistics at run time.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StdConv2d", "Bottleneck", "ResNetV2", "ENCODER_NORMS"]

ENCODER_NORMS = ("group", "batch")


class StdConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised (zero mean, unit variance per output channel)."""

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (w - mean) / torch.sqrt(var + 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


def _gn(channels: int, norm: str = "group") -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(32, channels, eps=1e-6)


def _check_norm(norm: str) -> None:
    if norm not in ENCODER_NORMS:
        raise ValueError(f"norm must be one of {ENCODER_NORMS}, got {norm!r}")


class Bottleneck(nn.Module):
    """Bottleneck unit (1x1, 3x3, 1x1) with GroupNorm and a projected shortcut when shapes change.

    Args:
        in_channels: input channels.
        out_channels: output channels (4x the middle width).
        mid_channels: width of the 3x3 conv.
        stride: stride of the 3x3 conv and of the shortcut projection.
        norm: ``"group"`` (GroupNorm(32), TransUNet) or ``"batch"`` (BatchNorm2d, foldable
            into the convolutions at export). The attributes keep their ``gn*`` names either
            way so that checkpoints of both variants share one key layout.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, stride: int = 1,
                 norm: str = "group") -> None:
        super().__init__()
        _check_norm(norm)
        self.conv1 = StdConv2d(in_channels, mid_channels, 1, bias=False)
        self.gn1 = _gn(mid_channels, norm)
        self.conv2 = StdConv2d(mid_channels, mid_channels, 3, stride=stride, padding=1, bias=False)
        self.gn2 = _gn(mid_channels, norm)
        self.conv3 = StdConv2d(mid_channels, out_channels, 1, bias=False)
        self.gn3 = _gn(out_channels, norm)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = StdConv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.gn_proj = (nn.BatchNorm2d(out_channels) if norm == "batch"
                            else nn.GroupNorm(out_channels, out_channels, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.gn_proj(self.downsample(x))
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return F.relu(shortcut + y)


class ResNetV2(nn.Module):
    """Three-stage ResNetV2 encoder returning the stride-16 map and three skips.

    Args:
        width: base width (R50: 64); stage outputs are 4w, 8w, 16w channels.
        units: bottleneck units per stage.
        in_channels: image channels (3 after TransUNet's grey-to-RGB repeat).
        norm: ``"group"`` (TransUNet) or ``"batch"`` (see :class:`Bottleneck`).

    Shapes:
        input (B, in_channels, H, W) with H, W multiples of 16;
        output (B, 16w, H/16, W/16) and skips [(B, 8w, H/8, W/8), (B, 4w, H/4, W/4),
        (B, w, H/2, W/2)] (coarsest first, the order the decoder consumes them).
    """

    def __init__(self, width: int = 64, units: Sequence[int] = (3, 4, 9), in_channels: int = 3,
                 norm: str = "group") -> None:
        super().__init__()
        _check_norm(norm)
        self.width = width
        self.root = nn.Sequential(
            StdConv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            _gn(width, norm),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0)
        stages: List[nn.Sequential] = []
        cin = width
        for index, n_units in enumerate(units):
            cout, cmid = width * 4 * 2 ** index, width * 2 ** index
            stride = 1 if index == 0 else 2
            blocks = [Bottleneck(cin, cout, cmid, stride, norm)]
            blocks += [Bottleneck(cout, cout, cmid, norm=norm) for _ in range(n_units - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.out_channels = cin
        self.skip_channels: Tuple[int, int, int] = (width * 8, width * 4, width)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        size = x.shape[-2:]
        x = self.root(x)
        skips = [x]
        x = self.pool(x)
        for index, stage in enumerate(self.stages[:-1]):
            x = stage(x)
            # The unpadded max-pool makes stage 1 one pixel short (55 at 224); pad its
            # skip back to H/4 as TransUNet does, while x itself continues unpadded.
            target = (size[0] // (4 * 2 ** index), size[1] // (4 * 2 ** index))
            feat = x
            if feat.shape[-2:] != target:
                feat = F.pad(feat, (0, target[1] - feat.shape[-1], 0, target[0] - feat.shape[-2]))
            skips.append(feat)
        x = self.stages[-1](x)
        return x, skips[::-1]
