"""TransUNet teacher and lightweight SHSA/MHSA students, by registered name."""

from __future__ import annotations

from typing import List

from .configs import MODEL_CONFIGS, TransUNetConfig, get_config, list_models
from .outputs import TransUNetOutput
from .transunet import TransUNet

__all__ = ["TransUNet", "TransUNetConfig", "TransUNetOutput", "MODEL_CONFIGS", "create_model",
           "get_config", "list_models"]


def create_model(name: str, num_classes: int = 9, img_size: int = 224, in_channels: int = 1,
                 **overrides: object) -> TransUNet:
    """Build a registered network, e.g. ``create_model("student-shsa", num_classes=9)``.

    Args:
        name: a name from :func:`list_models`.
        num_classes: output classes including background.
        img_size: training input size (multiple of 16).
        in_channels: 1 for CT, 3 for RGB video frames.
        **overrides: config fields to change (e.g. ``depth=2``).
    """
    return TransUNet(get_config(name, **overrides), num_classes, img_size, in_channels)
