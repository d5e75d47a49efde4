"""Is this volume CT in Hounsfield units? Hard failures for unusable values, warnings for doubtful ones.

Models are trained on HU windowed to the card's range, so a volume that is not HU
(normalised to [0, 1], an 8-bit export, MR, raw stored values without the DICOM
rescale) gives a meaningless segmentation without any error. Those cases are
recognised from the value range and reported as warnings; NaN/inf and constant
volumes cannot be segmented at all and raise.
"""

from __future__ import annotations

import logging
from typing import List

import numpy as np

from ..errors import InputImageError

__all__ = ["reject_unusable_values", "intensity_warnings", "check_ct_intensities"]

_log = logging.getLogger("KDSegmentationLib")

# Air is about -1000 HU; every CT of a body has some outside or in the lungs/bowel.
# A lowest value above this threshold means the values are not HU (or the volume was
# cropped to soft tissue, which the model was not trained on either).
_NO_AIR_ABOVE_HU = -200.0
# Voxels looked at before the full passes (a strided sample: a few thousand cache lines).
_SAMPLE_VOXELS = 4096


def reject_unusable_values(array: np.ndarray, source: str = "input") -> None:
    """Raise if ``array`` holds NaN/inf or a single value.

    Integer voxels cannot be NaN or infinite, so two different values in a sparse sample
    prove them usable without the full passes of minimum and maximum (5 ms of the read
    stage for a 512 x 512 x 150 int16 CT; the pipeline takes both later for its warnings).

    Raises:
        InputImageError: non-finite values, or a constant volume.
    """
    if array.dtype.kind in "iub" and array.flags.c_contiguous and array.size:
        sample = array.reshape(-1)[::max(1, array.size // _SAMPLE_VOXELS)]
        if sample.min() != sample.max():
            return
    _reject_unusable_range(array, array.min(), array.max(), source)


def _reject_unusable_range(array: np.ndarray, low, high, source: str) -> None:
    """:func:`reject_unusable_values` given the array's ``low`` = min and ``high`` = max."""
    if array.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
        # min/max propagate NaN and show infinities: only then is the count worth a pass.
        finite = np.isfinite(array)
        bad = int(finite.size - np.count_nonzero(finite))
        raise InputImageError(f"The {source} contains {bad} NaN or infinite voxel values.",
                              "Repair or re-export the volume (e.g. replace NaN by -1024 HU).")
    if low == high:
        raise InputImageError(f"The {source} is constant (every voxel is {float(low):g}); there is nothing "
                              "to segment.", "Check that the right volume was loaded.")


def intensity_warnings(array: np.ndarray, source: str = "input") -> List[str]:
    """Reasons to doubt that ``array`` is CT in Hounsfield units (empty list if it looks like HU)."""
    return _range_warnings(array, float(array.min()), float(array.max()), source)


def _range_warnings(array: np.ndarray, low: float, high: float, source: str) -> List[str]:
    """:func:`intensity_warnings` given the array's ``low`` = min and ``high`` = max."""
    found = f"values in [{low:g}, {high:g}]"
    if low >= -1.0 and high <= 1.0:
        return [f"The {source} has {found}: it looks normalised, not CT in Hounsfield units, so the "
                "segmentation will be wrong. Use the original CT."]
    if array.dtype == np.uint8 or (low >= 0 and high <= 255):
        return [f"The {source} has {found} ({array.dtype}): it looks like an 8-bit export or a screenshot, "
                "not CT in Hounsfield units, so the segmentation will be wrong. Use the original CT."]
    if low > _NO_AIR_ABOVE_HU:
        return [f"The {source} has {found} and no air (about -1000 HU): it may be MR, or CT stored without "
                "its rescale intercept, so the segmentation will be wrong. Use a CT volume in Hounsfield "
                "units."]
    return []


def check_ct_intensities(array: np.ndarray, source: str = "input") -> List[str]:
    """:func:`reject_unusable_values`, then :func:`intensity_warnings` (each also logged).

    Args:
        array: the volume's voxel values, any shape.
        source: how messages name the volume.

    Returns:
        Warning texts, empty when the values look like CT in HU.

    Raises:
        InputImageError: NaN/inf or constant values.
    """
    low, high = array.min(), array.max()  # one pass each, shared by both checks
    _reject_unusable_range(array, low, high, source)
    warnings = _range_warnings(array, float(low), float(high), source)
    for text in warnings:
        _log.warning(text)
    return warnings
