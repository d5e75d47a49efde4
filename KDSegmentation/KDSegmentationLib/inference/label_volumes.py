"""Per-structure volumes of a label map, in millilitres."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from .label_extents import LabelExtents

__all__ = ["label_volumes_ml"]


def label_volumes_ml(labels: np.ndarray, spacing: Sequence[float], names: Mapping[int, str],
                     extents: Optional[LabelExtents] = None) -> Dict[str, float]:
    """Volume of each named label: voxel count x voxel volume (mm^3) / 1000.

    Args:
        labels: integer label map, any shape ((Z, Y, X) when ``extents`` is given).
        spacing: voxel spacing in mm (any axis order; only the product matters).
        names: label value -> structure name; labels absent from the map get 0.0.
        extents: boxes holding every voxel of each label; voxels are then counted inside
            each box only, instead of one pass over the whole map.

    Returns:
        ``{name: mL}`` in the order of ``names``.
    """
    if labels.dtype.kind not in "ui":
        raise ValueError(f"labels must be an integer array, got {labels.dtype}")
    if not names:
        return {}
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    if extents is None:
        counts = np.bincount(labels.ravel(), minlength=max(names) + 1)
        return {name: float(counts[index]) * voxel_ml for index, name in names.items()}
    volumes = {}
    for index, name in names.items():
        box = extents.box(index, margin=0)
        count = 0 if box is None else np.count_nonzero(labels[box] == index)
        volumes[name] = float(count) * voxel_ml
    return volumes
