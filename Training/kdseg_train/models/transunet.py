"""TransUNet: ResNetV2 + ViT encoder and cascaded-upsampler decoder (Chen et al. 2021)."""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from ..errors import UsageError
from .configs import TransUNetConfig
from .decoder import CascadedUpsampler
from .outputs import TransUNetOutput
from .resnet_v2 import ResNetV2
from .transformer import HybridEmbedding, TransformerEncoder

__all__ = ["TransUNet"]


class TransUNet(nn.Module):
    """Hybrid CNN-transformer segmentation network (teacher and students share it).

    Args:
        config: architecture hyper-parameters (see :class:`TransUNetConfig`).
        num_classes: output classes including background.
        img_size: training input size; sets the learned position-embedding grid. Other
            multiples of 16 are accepted at run time (position table resized).
        in_channels: image channels; a 1-channel input is repeated to 3 as in TransUNet.

    Shapes:
        x (B, in_channels, H, W), H and W multiples of 16 -> logits (B, num_classes, H, W).
    """

    def __init__(self, config: TransUNetConfig, num_classes: int = 9, img_size: int = 224,
                 in_channels: int = 1) -> None:
        super().__init__()
        if num_classes < 2:
            raise UsageError(f"num_classes must be >= 2, got {num_classes}")
        if img_size <= 0 or img_size % 16:
            raise UsageError(f"img_size must be a positive multiple of 16, got {img_size}")
        if in_channels not in (1, 3):
            raise UsageError(f"in_channels must be 1 (CT) or 3 (RGB), got {in_channels}")
        self.config = config
        self.num_classes = num_classes
        self.img_size = img_size
        self.in_channels = in_channels
        self.encoder = ResNetV2(config.cnn_width, config.cnn_units, in_channels=3, norm=config.cnn_norm)
        self.embeddings = HybridEmbedding(self.encoder.out_channels, config.hidden_size, img_size,
                                          config.dropout)
        self.transformer = TransformerEncoder(config)
        self.decoder = CascadedUpsampler(config.hidden_size, config.head_channels,
                                         config.decoder_channels, self.encoder.skip_channels,
                                         config.n_skip)
        self.segmentation_head = nn.Conv2d(config.decoder_channels[-1], num_classes, 3, padding=1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected input of shape (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channel(s), got {x.shape[1]}")
        h, w = x.shape[-2:]
        if h % 16 or w % 16 or h < 32 or w < 32:
            # >= 32: a 16-pixel side leaves a 1x1 map after the CNN, where the shortcut
            # GroupNorm (one channel per group) has nothing to normalise.
            raise ValueError(f"input height and width must be multiples of 16 and >= 32 (the network "
                             f"downsamples by 16), got {h}x{w}; resize or pad the image")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point image (intensities in [0, 1]), got {x.dtype}")

    def forward_features(self, x: torch.Tensor, collect: bool = False) -> TransUNetOutput:
        """Run the network; with ``collect`` also keep every distillation tap."""
        self._check_input(x)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        feature_map, skips = self.encoder(x)
        tokens = self.embeddings(feature_map)
        encoded, layer_tokens, attentions = self.transformer(tokens, collect)
        b, n, d = encoded.shape
        h, w = x.shape[-2] // 16, x.shape[-1] // 16
        grid = encoded.transpose(1, 2).reshape(b, d, h, w)
        decoded, stages = self.decoder(grid, skips, collect)
        logits = self.forward_head(decoded)
        if not collect:
            return TransUNetOutput(logits=logits, grid=(h, w))
        return TransUNetOutput(
            logits=logits,
            skips=skips,
            encoder_map=feature_map,
            tokens=layer_tokens,
            attentions=attentions,
            attention_mean=[a.mean(dim=1) for a in attentions],
            decoder_features=stages,
            grid=(h, w),
        )

    def forward_head(self, decoded: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(decoded)

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> Union[torch.Tensor, TransUNetOutput]:
        out = self.forward_features(x, collect=return_features)
        return out if return_features else out.logits
