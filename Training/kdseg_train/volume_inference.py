"""Slice-by-slice prediction of a whole case with a PyTorch model (validation, PyTorch evaluation).

Mirrors the Lib's inference: every slice is resized to the model's input size, the
logits are resized back to the slice grid (bilinear) and the argmax taken there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["predict_case"]


@torch.no_grad()
def predict_case(model: nn.Module, image: np.ndarray, img_size: int, batch_size: int = 8,
                 device: torch.device = torch.device("cpu")) -> np.ndarray:
    """Label map of one case.

    Args:
        model: network returning logits (N, C, S, S) for input (N, in_channels, S, S).
        image: (Z, H, W) windowed CT slices, or (Z, channels, H, W) frames, values in [0, 1].
        img_size: S.
        batch_size: slices per forward pass.
        device: where the model lives.

    Returns:
        (Z, H, W) uint8 labels.
    """
    was_training = model.training
    model.eval()
    slices = image[:, None] if image.ndim == 3 else image
    z, _, h, w = slices.shape
    out = np.zeros((z, h, w), dtype=np.uint8)
    try:
        for first in range(0, z, batch_size):
            x = torch.from_numpy(np.ascontiguousarray(slices[first:first + batch_size], dtype=np.float32)).to(device)
            x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
            logits = F.interpolate(model(x).float(), size=(h, w), mode="bilinear", align_corners=False)
            out[first:first + batch_size] = logits.argmax(1).cpu().numpy().astype(np.uint8)
    finally:
        model.train(was_training)
    return out
