"""Slice-by-slice prediction of a whole case with a PyTorch model (validation, PyTorch evaluation).

Mirrors the Lib's inference exactly: every slice is put on the model grid with
``KDSegmentationLib.inference.model_grid.ModelGrid`` (resize or physical-size mode, whichever the
model card declares), and the argmax of the class scores sampled back onto the slice
grid is the label (background where a physical-size grid does not cover the slice).
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

from KDSegmentationLib.inference.model_grid import ModelGrid

__all__ = ["predict_case"]


@torch.no_grad()
def predict_case(model: nn.Module, image: np.ndarray, grid: Union[int, ModelGrid], batch_size: int = 8,
                 device: torch.device = torch.device("cpu"), spacing_yx: Sequence[float] = (1.0, 1.0)
                 ) -> np.ndarray:
    """Label map of one case.

    Args:
        model: network returning logits (N, C, S, S) for input (N, in_channels, S, S).
        image: (Z, H, W) windowed CT slices, or (Z, channels, H, W) frames, values in [0, 1].
        grid: the model grid, or S for a square resize-mode grid.
        batch_size: slices per forward pass.
        device: where the model lives.
        spacing_yx: in-plane pixel size of ``image`` in mm (used by physical-size grids).

    Returns:
        (Z, H, W) uint8 labels.
    """
    grid = grid if isinstance(grid, ModelGrid) else ModelGrid(int(grid), int(grid))
    was_training = model.training
    model.eval()
    slices = image[:, None] if image.ndim == 3 else image
    z, _, h, w = slices.shape
    out = np.zeros((z, h, w), dtype=np.uint8)
    try:
        for first in range(0, z, batch_size):
            x = grid.to_model(np.asarray(slices[first:first + batch_size], dtype=np.float32), spacing_yx)
            logits = model(torch.from_numpy(x).to(device)).float().cpu().numpy()
            grid.argmax_to_slice(logits, (h, w), spacing_yx, out=out[first:first + batch_size])
    finally:
        model.train(was_training)
    return out
