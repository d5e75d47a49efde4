"""Where each label is in a label map, gathered while the map is written (no whole-volume scan).

Post-processing and volume counting then work inside one box per organ instead of
scanning the whole (Z, Y, X) map once per organ, which for a 512 x 512 x 300 CT and
eight organs is most of the cost of those steps.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["LabelExtents"]

Box = Tuple[slice, slice, slice]


class LabelExtents:
    """One index box per label value that holds every voxel reported for that label.

    A box may be larger than the tightest one (callers report whole cells when that is
    cheaper); it never misses a reported voxel.

    Args:
        shape: (Z, Y, X) of the label map the boxes index.
    """

    def __init__(self, shape: Sequence[int]) -> None:
        if len(shape) != 3 or min(int(s) for s in shape) < 1:
            raise ValueError(f"shape must be (Z, Y, X) with every size >= 1, got {tuple(shape)}")
        self.shape = tuple(int(s) for s in shape)
        self._lower = np.full((256, 3), np.iinfo(np.int64).max, dtype=np.int64)
        self._upper = np.full((256, 3), -1, dtype=np.int64)

    def include_box(self, value: int, lower: Sequence[int], upper: Sequence[int]) -> None:
        """Grow ``value``'s box to hold the inclusive (z, y, x) index box ``lower``..``upper``."""
        if not 0 <= value <= 255:
            raise ValueError(f"label value must be in 0..255, got {value}")
        np.minimum(self._lower[value], np.asarray(lower, dtype=np.int64), out=self._lower[value])
        np.maximum(self._upper[value], np.asarray(upper, dtype=np.int64), out=self._upper[value])

    def include_voxels(self, values: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        """Grow the boxes to hold voxel ``(z[i], y[i], x[i])`` of label ``values[i]`` for every i.

        Args:
            values: (M,) label values (integers 0..255).
            z, y, x: (M,) voxel indices.
        """
        values = np.asarray(values).ravel()
        if values.size == 0:
            return
        points = np.stack([np.asarray(a, dtype=np.int64).ravel() for a in (z, y, x)], axis=1)  # (M, 3)
        order = np.argsort(values, kind="stable")
        values, points = values[order], points[order]
        keys = values.astype(np.int64)
        first = np.flatnonzero(np.diff(keys, prepend=keys[0] - 1))  # runs of equal values (np.unique
        present = keys[first]  # would import numpy.ma, slowing every start-up)
        lowers = np.minimum.reduceat(points, first, axis=0)
        uppers = np.maximum.reduceat(points, first, axis=0)
        for value, lower, upper in zip(present.tolist(), lowers, uppers):
            self.include_box(int(value), lower, upper)

    def include_label_map(self, labels: np.ndarray, first_slice: int = 0) -> None:
        """Grow the boxes to hold every label of a full-resolution (n, Y, X) batch starting at slice ``first_slice``."""
        for value in np.flatnonzero(np.bincount(labels.ravel(), minlength=1)):
            mask = labels == value
            spans = [np.flatnonzero(mask.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
            self.include_box(int(value), (first_slice + spans[0][0], spans[1][0], spans[2][0]),
                             (first_slice + spans[0][-1], spans[1][-1], spans[2][-1]))

    def narrow_to(self, value: int, box: Box) -> None:
        """Record that every voxel of ``value`` now lies inside ``box`` ((z, y, x) slices), e.g. after its
        islands were removed: its box shrinks to the overlap of both (no box if they do not overlap)."""
        if not self.contains(value):
            return
        lower = np.maximum(self._lower[value], [s.start for s in box])
        upper = np.minimum(self._upper[value], [s.stop - 1 for s in box])
        if (lower > upper).any():
            self._lower[value], self._upper[value] = np.iinfo(np.int64).max, -1
        else:
            self._lower[value], self._upper[value] = lower, upper

    def contains(self, value: int) -> bool:
        """Whether any voxel of ``value`` was reported."""
        return bool(self._upper[value, 0] >= 0)

    def box(self, value: int, margin: int = 1) -> Optional[Box]:
        """Index slices around ``value``'s voxels, ``margin`` wider on each side where the map allows.

        Returns:
            (z, y, x) slices, or None when no voxel of ``value`` was reported.
        """
        if not self.contains(value):
            return None
        return tuple(slice(max(int(low) - margin, 0), min(int(high) + margin + 1, size))  # type: ignore[return-value]
                     for low, high, size in zip(self._lower[value], self._upper[value], self.shape))
