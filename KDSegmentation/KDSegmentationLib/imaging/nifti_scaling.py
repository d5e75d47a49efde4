"""NIfTI ``scl_slope``/``scl_inter`` applied to stored voxels exactly as ITK applies them.

A NIfTI file may store raw integers and the rule to turn them into values:
``value = stored * scl_slope + scl_inter``. dcm2niix, the usual DICOM-to-NIfTI
converter, writes CT this way (int16 or uint16 scanner values, slope 1, intercept
-1024). ITK's reader then returns 32-bit float voxels, computed in double precision
and rounded to float. When the stored type has at most 16 bits and slope and intercept
are whole numbers small enough that every result is a whole number below 2**24, each
result is exactly representable in float32, so any way of computing it (here: float32
arithmetic, one piece of the stream at a time) gives ITK's values to the bit. Other
scalings (fractional slopes, wider or float types) are left to ITK's reader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["ExactScaling", "exact_scaling", "ScaledVoxelSink"]

# float32 holds every whole number up to 2**24 exactly.
_FLOAT32_EXACT_INTEGERS = 2 ** 24


@dataclass(frozen=True)
class ExactScaling:
    """``stored * slope + intercept`` for a stored integer type whose results are all exact in float32.

    Args:
        stored: the file's voxel type (little-endian integer of at most 16 bits).
        slope: ``scl_slope``, a whole number other than 0.
        intercept: ``scl_inter``, a whole number.
    """

    stored: np.dtype
    slope: float
    intercept: float


def exact_scaling(stored: np.dtype, slope: float, intercept: float) -> Optional[ExactScaling]:
    """The scaling ITK applies to ``stored`` voxels, if float32 arithmetic reproduces it to the bit; else None.

    Args:
        stored: the voxel type in the file.
        slope, intercept: the header's ``scl_slope`` and ``scl_inter`` (slope 0 or 1 with
            intercept 0 means no scaling and is not passed here).
    """
    if stored.kind not in "iu" or stored.itemsize > 2:
        return None
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        return None  # slope 0 with an intercept: readers disagree on its meaning, so ITK decides
    if slope != int(slope) or intercept != int(intercept):
        return None
    info = np.iinfo(stored)
    largest = max(abs(int(info.min)), abs(int(info.max))) * abs(int(slope)) + abs(int(intercept))
    if largest >= _FLOAT32_EXACT_INTEGERS:
        return None
    return ExactScaling(stored, float(slope), float(intercept))


class ScaledVoxelSink:
    """Stored voxel bytes, in stream order, written as scaled float32 values into ``values``.

    A piece of the decompressed stream may end inside a voxel; those bytes wait for
    the next piece.

    Args:
        values: the float32 voxels to fill, flat (e.g. a SimpleITK image's buffer).
        scaling: how stored voxels become values.
    """

    def __init__(self, values: np.ndarray, scaling: ExactScaling) -> None:
        if values.dtype != np.float32 or values.ndim != 1:
            raise ValueError(f"values must be a flat float32 array, got {values.dtype} of shape {values.shape}")
        self._values = values
        self._scaling = scaling
        self._slope = np.float32(scaling.slope)
        self._intercept = np.float32(scaling.intercept)
        self._split = b""  # the first bytes of a voxel cut by the end of a piece
        self._taken = 0  # stored bytes received so far
        self._filled = 0  # values written so far

    def take(self, piece: np.ndarray, start: int) -> None:
        """Convert ``piece`` (uint8, the stored voxel bytes from byte ``start``; pieces in order, no gaps)."""
        if start != self._taken:
            raise ValueError(f"piece starts at byte {start}, expected {self._taken} (pieces must come in order)")
        self._taken += piece.size
        size = self._scaling.stored.itemsize
        if self._split:
            missing = size - len(self._split)
            self._split += piece[:missing].tobytes()
            piece = piece[missing:]
            if len(self._split) < size:
                return
            self._convert(np.frombuffer(self._split, self._scaling.stored))
            self._split = b""
        whole = piece.size - piece.size % size
        self._convert(piece[:whole].view(self._scaling.stored))
        self._split = piece[whole:].tobytes()

    def _convert(self, stored: np.ndarray) -> None:
        """Write ``stored`` (whole voxels) as values after those already written."""
        out = self._values[self._filled:self._filled + stored.size]
        if out.size != stored.size:
            raise ValueError(f"{self._filled + stored.size} voxels received, the image holds {self._values.size}")
        if self._slope == 1:
            np.add(stored, self._intercept, out=out, dtype=np.float32)
        else:
            np.multiply(stored, self._slope, out=out, dtype=np.float32)
            out += self._intercept
        self._filled += stored.size
