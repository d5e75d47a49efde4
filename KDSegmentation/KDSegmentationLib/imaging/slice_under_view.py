"""Which axial slice of a volume a slice view shows, from the view's and the volume's matrices.

A slice view (Slicer's ``vtkMRMLSliceNode``) is a plane given by its SliceToRAS matrix:
columns 0 and 1 span the plane, column 2 is its normal, column 3 a point on it (the
view's centre), all in world RAS millimetres. The volume is given by the matrix that
takes its canonical (LPS) voxel indices ``(x, y, z)`` to world RAS, parent transforms
included. The view shows axial slice ``z`` of the volume when the plane coincides with
the voxel plane ``z = const``; the model then sees exactly the slice the user sees.

The test is geometric rather than an angle threshold: along each of the volume's four
in-plane corner columns, the plane is met at a (fractional) slice index; when those
indices differ by more than ``tolerance_slices`` the plane cuts through several slices
across the volume (a reformatted or oblique view) and no single slice is under view.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional, Sequence

import numpy as np

__all__ = ["ViewState", "SliceUnderView", "axial_slice_under_view"]

# Half a slice: a plane within this many slices of one voxel plane over the whole
# volume is drawn from that slice by a nearest-neighbour reslice anyway.
DEFAULT_TOLERANCE_SLICES = 0.5


class ViewState(str, Enum):
    """Whether a slice view shows one axial slice of the volume, and if not, why."""

    AXIAL = "axial"
    NOT_AXIAL = "not axial"
    OUTSIDE = "outside"
    NONLINEAR_TRANSFORM = "nonlinear transform"

    def hint(self) -> str:
        """One line telling the user what the preview shows, or why nothing and what to do."""
        return _HINTS[self]


_HINTS = {
    ViewState.AXIAL: "Live preview of the slice under view.",
    ViewState.NOT_AXIAL: ("Live preview needs an axial view: the Red view is reformatted or oblique to the volume. "
                          "Set the Red view to Axial (and, for a tilted scan, 'Rotate to volume plane')."),
    ViewState.OUTSIDE: "The Red view's slice is outside the input volume; scroll into the volume to preview.",
    ViewState.NONLINEAR_TRANSFORM: ("Live preview needs an axial view: the input volume is under a non-linear "
                                    "transform, so no view shows one of its slices. Harden or remove the transform."),
}


@dataclass(frozen=True)
class SliceUnderView:
    """The outcome of :func:`axial_slice_under_view`.

    Args:
        state: whether an axial slice is under view.
        index: the canonical axial slice index ``z`` when ``state`` is AXIAL, else None.
    """

    state: ViewState
    index: Optional[int] = None

    @property
    def hint(self) -> str:
        return self.state.hint()


def _affine(matrix: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (4, 4) or not np.allclose(matrix[3], (0, 0, 0, 1)):
        raise ValueError(f"{name} must be a 4x4 affine matrix (last row 0 0 0 1), got {matrix.tolist()}")
    return matrix


def axial_slice_under_view(slice_to_ras: np.ndarray, volume_ijk_to_world: np.ndarray, shape_zyx: Sequence[int],
                           tolerance_slices: float = DEFAULT_TOLERANCE_SLICES) -> SliceUnderView:
    """The canonical axial slice of a volume that a slice view shows.

    Args:
        slice_to_ras: the view's 4x4 SliceToRAS matrix (plane axes, normal, centre; world RAS).
        volume_ijk_to_world: 4x4 matrix from canonical voxel index (x, y, z) to world RAS,
            including the volume's parent transforms.
        shape_zyx: the canonical array's shape (Z, Y, X).
        tolerance_slices: how far (in slices) the plane may stray from one voxel plane
            across the volume before the view counts as oblique.

    Returns:
        AXIAL with the slice index; NOT_AXIAL for reformatted/oblique planes; OUTSIDE
        when the plane is axial but beyond the first or last slice.

    Raises:
        ValueError: a matrix that is not affine, a zero-length normal or a volume axis of
            length zero, or a shape that is not three positive sizes.
    """
    view = _affine(slice_to_ras, "slice_to_ras")
    volume = _affine(volume_ijk_to_world, "volume_ijk_to_world")
    if len(shape_zyx) != 3 or min(shape_zyx) < 1:
        raise ValueError(f"shape_zyx must be three sizes >= 1, got {tuple(shape_zyx)}")
    if tolerance_slices <= 0:
        raise ValueError(f"tolerance_slices must be > 0, got {tolerance_slices}")
    depth, height, width = (int(n) for n in shape_zyx)
    normal = view[:3, 2]
    slice_step = volume[:3, 2]  # world displacement from slice z to z + 1
    if np.linalg.norm(normal) == 0 or np.linalg.norm(slice_step) == 0:
        raise ValueError("the view normal and the volume's slice axis must have non-zero length")
    along = float(normal @ slice_step)
    # A plane (nearly) parallel to the slice axis meets no slice column at one point.
    if abs(along) <= 1e-9 * np.linalg.norm(normal) * np.linalg.norm(slice_step):
        return SliceUnderView(ViewState.NOT_AXIAL)

    def slice_index_at(x: float, y: float) -> float:
        """Fractional z where the plane meets the voxel column through in-plane index (x, y)."""
        base = volume[:3, :3] @ np.array([x, y, 0.0]) + volume[:3, 3]
        return float(normal @ (view[:3, 3] - base)) / along

    corners = [slice_index_at(x, y) for x in (0, width - 1) for y in (0, height - 1)]
    if max(corners) - min(corners) > tolerance_slices:
        return SliceUnderView(ViewState.NOT_AXIAL)
    index = int(np.floor(slice_index_at((width - 1) / 2, (height - 1) / 2) + 0.5))
    if not 0 <= index < depth:
        return SliceUnderView(ViewState.OUTSIDE)
    return SliceUnderView(ViewState.AXIAL, index)
