"""Label-map clean-up: structure subsets, largest connected component, hole filling, volumes."""

from __future__ import annotations

from typing import Dict, Iterable, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

__all__ = ["keep_structures", "largest_component_and_fill", "label_volumes_ml"]


def keep_structures(labels: np.ndarray, keep: Iterable[int]) -> np.ndarray:
    """Set every label not in ``keep`` to background (in place) and return ``labels``."""
    keep_mask = np.zeros(256, dtype=bool)
    keep_mask[list(keep)] = True
    keep_mask[0] = True
    labels[~keep_mask[labels]] = 0
    return labels


def _bbox(mask: np.ndarray, margin: int = 2) -> Tuple[slice, ...]:
    bounds = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        bounds.append(slice(max(hits[0] - margin, 0), min(hits[-1] + margin + 1, mask.shape[axis])))
    return tuple(bounds)


def largest_component_and_fill(labels: np.ndarray, spacing_zyx: Sequence[float],
                               label_values: Iterable[int]) -> np.ndarray:
    """Per organ keep the largest 3D connected component and fill its enclosed holes (in place).

    Hole filling only claims background voxels, never another organ's.

    Args:
        labels: (Z, Y, X) uint8 label map.
        spacing_zyx: voxel spacing (unused by the topology, kept on the temporary images).
        label_values: organ labels to clean.
    """
    for value in label_values:
        mask = labels == value
        if not mask.any():
            continue
        box = _bbox(mask)
        sub = mask[box].astype(np.uint8)
        image = sitk.GetImageFromArray(sub)
        image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
        components = sitk.RelabelComponent(sitk.ConnectedComponent(image, True), sortByObjectSize=True)
        largest = sitk.BinaryFillhole(components == 1, fullyConnected=False)
        cleaned = sitk.GetArrayFromImage(largest).astype(bool)
        region = labels[box]
        region[(region == value) & ~cleaned] = 0
        region[cleaned & (region == 0)] = value
    return labels


def label_volumes_ml(labels: np.ndarray, spacing: Sequence[float], names: Dict[int, str]) -> Dict[str, float]:
    """Volume of each named label in millilitres (voxel count x voxel volume)."""
    counts = np.bincount(labels.ravel(), minlength=max(names) + 1)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {name: float(counts[index]) * voxel_ml for index, name in names.items()}
