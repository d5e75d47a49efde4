"""Per-structure volumes of a label map, in millilitres."""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np

__all__ = ["label_volumes_ml"]


def label_volumes_ml(labels: np.ndarray, spacing: Sequence[float], names: Mapping[int, str]) -> Dict[str, float]:
    """Volume of each named label: voxel count x voxel volume (mm^3) / 1000.

    Args:
        labels: integer label map, any shape.
        spacing: voxel spacing in mm (any axis order; only the product matters).
        names: label value -> structure name; labels absent from the map get 0.0.

    Returns:
        ``{name: mL}`` in the order of ``names``.
    """
    if labels.dtype.kind not in "ui":
        raise ValueError(f"labels must be an integer array, got {labels.dtype}")
    if not names:
        return {}
    counts = np.bincount(labels.ravel(), minlength=max(names) + 1)
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    return {name: float(counts[index]) * voxel_ml for index, name in names.items()}
