"""Intensity preprocessing defined by a model card, identical in training and inference."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["window_to_unit"]


def window_to_unit(hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip HU to ``window`` = (low, high) and scale linearly to [0, 1] (TransUNet/Synapse).

    Args:
        hu: array of Hounsfield units, any shape.
        window: (low, high) with low < high, e.g. (-125, 275).

    Returns:
        float32 array of the same shape with values in [0, 1].
    """
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"HU window must have low < high, got {tuple(window)}")
    source = np.asarray(hu)
    if source.dtype == np.float32:
        out = np.clip(source, low, high)  # a new array: ``hu`` is never modified
    else:
        out = source.astype(np.float32)  # the one new array; the window is applied to it in place
        np.clip(out, low, high, out=out)
    out -= low
    out /= high - low
    return out
