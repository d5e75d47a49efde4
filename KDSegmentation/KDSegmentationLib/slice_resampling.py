"""Resizing stacks of axial slices between the image grid and the model grid (SimpleITK).

Both directions map the slice's field of view edge to edge (pixel centres of an
n-pixel axis sit at (i + 0.5) / n of the extent), so a round trip does not shift
the image by half a pixel. Slices are stacked along z with spacing 1 and only x/y
are resampled.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import SimpleITK as sitk

__all__ = ["resize_slices", "resize_channels"]


def _resample(image: sitk.Image, in_hw: Tuple[int, int], out_hw: Tuple[int, int], n: int,
              interpolator: int) -> sitk.Image:
    (in_h, in_w), (out_h, out_w) = in_hw, out_hw
    spacing = (in_w / out_w, in_h / out_h, 1.0)
    # input pixel i has its centre at i (spacing 1, origin 0), covering [-0.5, n - 0.5]
    origin = (-0.5 + spacing[0] / 2, -0.5 + spacing[1] / 2, 0.0)
    return sitk.Resample(image, (out_w, out_h, n), sitk.Transform(), interpolator, origin, spacing,
                         (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), 0.0, image.GetPixelID())


def resize_slices(slices: np.ndarray, out_hw: Tuple[int, int], linear: bool = True) -> np.ndarray:
    """Resize (N, H, W) slices to (N, out_h, out_w) float32 (linear, or nearest for labels)."""
    if slices.ndim != 3:
        raise ValueError(f"expected (N, H, W) slices, got shape {slices.shape}")
    n, h, w = slices.shape
    if (h, w) == tuple(out_hw):
        return np.asarray(slices, dtype=np.float32)
    image = sitk.GetImageFromArray(np.asarray(slices, dtype=np.float32))
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    return sitk.GetArrayFromImage(_resample(image, (h, w), tuple(out_hw), n, interpolator))


def resize_channels(maps: np.ndarray, out_hw: Tuple[int, int]) -> np.ndarray:
    """Linearly resize per-class maps (N, C, h, w) to (N, out_h, out_w, C) float32 (channels last)."""
    if maps.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) maps, got shape {maps.shape}")
    n, c, h, w = maps.shape
    vectors = np.ascontiguousarray(np.moveaxis(maps, 1, -1), dtype=np.float32)
    if (h, w) == tuple(out_hw):
        return vectors
    image = sitk.GetImageFromArray(vectors, isVector=True)
    return sitk.GetArrayFromImage(_resample(image, (h, w), tuple(out_hw), n, sitk.sitkLinear))
