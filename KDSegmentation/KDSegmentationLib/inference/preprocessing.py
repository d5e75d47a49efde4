"""Intensity preprocessing defined by a model card, identical in training and inference."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["window_to_unit", "clip_to_window"]


def window_to_unit(hu: np.ndarray, window: Sequence[float], out: Optional[np.ndarray] = None) -> np.ndarray:
    """Clip HU to ``window`` = (low, high) and scale linearly to [0, 1] (TransUNet/Synapse).

    Args:
        hu: array of Hounsfield units, any shape.
        window: (low, high) with low < high, e.g. (-125, 275).
        out: optional float32 array of ``hu``'s shape to write into (not ``hu`` itself).

    Returns:
        float32 array of the same shape with values in [0, 1] (``out`` when given): the
        float32 HU clipped to the window (:func:`clip_to_window`), minus low, divided by high - low.
    """
    out = clip_to_window(hu, window, out)
    low, high = float(window[0]), float(window[1])
    out -= low
    out /= high - low
    return out


def clip_to_window(hu: np.ndarray, window: Sequence[float], out: Optional[np.ndarray] = None) -> np.ndarray:
    """The HU as float32, clipped to ``window`` = (low, high): the first step of :func:`window_to_unit`.

    Args:
        hu: array of Hounsfield units, any shape and real dtype.
        window: (low, high) with low < high.
        out: optional float32 array of ``hu``'s shape to write into (not ``hu`` itself).

    Returns:
        float32 array of the same shape with values in [low, high] (``out`` when given).
    """
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"HU window must have low < high, got {tuple(window)}")
    source = np.asarray(hu)
    if out is None:
        out = np.empty(source.shape, dtype=np.float32)  # ``hu`` is never modified
    elif out.shape != source.shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {source.shape}, got {out.dtype} {out.shape}")
    if _clips_exactly_as_integers(source.dtype, low, high) and source.ndim and source.strides[-1] > 0:
        # Clipping the integers and converting the clipped values gives the same float32 values as
        # converting first (both bounds and everything between them are exact in float32), in one
        # pass that reads the narrow integers (a quarter faster on int16; on rows stored backwards
        # numpy's integer clip is slower than the float one, so those take the float path).
        np.clip(source, int(low), int(high), out=out, casting="unsafe")
    else:
        np.clip(source, low, high, out=out, dtype=np.float32, casting="unsafe")
    return out


def _clips_exactly_as_integers(dtype: np.dtype, low: float, high: float) -> bool:
    if not np.issubdtype(dtype, np.integer) or not (low.is_integer() and high.is_integer()):
        return False
    limits = np.iinfo(dtype)
    return limits.min <= low and high <= limits.max and max(abs(low), abs(high)) <= 2 ** 24
