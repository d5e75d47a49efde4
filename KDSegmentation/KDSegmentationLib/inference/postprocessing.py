"""Label-map clean-up: keep a subset of structures, one connected component per organ, no holes."""

from __future__ import annotations

from typing import Iterable, Tuple

import numpy as np
import SimpleITK as sitk

__all__ = ["keep_structures", "largest_component_and_fill"]


def keep_structures(labels: np.ndarray, keep: Iterable[int]) -> np.ndarray:
    """Set every label not in ``keep`` to background (in place) and return ``labels``.

    Args:
        labels: uint8 label map, any shape.
        keep: label values to keep (background 0 is always kept).
    """
    if labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8, got {labels.dtype}")
    keep_mask = np.zeros(256, dtype=bool)
    keep_mask[list(keep)] = True
    keep_mask[0] = True
    labels[~keep_mask[labels]] = 0
    return labels


def _bounding_box(mask: np.ndarray, margin: int = 1) -> Tuple[slice, ...]:
    """Slices around ``mask``'s True voxels, ``margin`` voxels wider where the array allows."""
    bounds = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        bounds.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, mask.shape[axis])))
    return tuple(bounds)


def largest_component_and_fill(labels: np.ndarray, label_values: Iterable[int]) -> np.ndarray:
    """Per organ keep the largest 3D connected component and fill its enclosed holes (in place).

    Each organ is one object, so smaller islands are false positives. Connectivity is
    26-neighbour for components (thin structures stay whole) and 6-neighbour for
    holes (only truly enclosed cavities are filled). Filling only claims background
    voxels, never another organ's. Work is done inside each organ's bounding box so
    memory stays proportional to the organ, not the volume.

    Args:
        labels: (Z, Y, X) uint8 label map, modified in place.
        label_values: organ labels to clean.

    Returns:
        ``labels``.
    """
    for value in label_values:
        mask = labels == value
        if not mask.any():
            continue
        box = _bounding_box(mask)
        organ = sitk.GetImageFromArray(mask[box].view(np.uint8))
        del mask
        components = sitk.ConnectedComponent(organ, True)
        component_ids = sitk.GetArrayViewFromImage(components)
        sizes = np.bincount(component_ids.ravel())
        sizes[0] = 0
        largest = sitk.GetImageFromArray((component_ids == sizes.argmax()).view(np.uint8))
        del component_ids, components
        filled = sitk.BinaryFillhole(largest, fullyConnected=False)
        cleaned = sitk.GetArrayFromImage(filled).astype(bool)
        region = labels[box]
        region[(region == value) & ~cleaned] = 0
        region[cleaned & (region == 0)] = value
    return labels
