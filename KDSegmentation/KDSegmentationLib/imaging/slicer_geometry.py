"""Slicer volume arrays (KJI numpy + IJK-to-RAS matrix) <-> SimpleITK images (LPS), exactly.

Slicer's ``arrayFromVolume`` gives ``a[k, j, i]`` and the node's IJKToRAS 4x4 matrix
carries spacing, direction and origin in RAS; SimpleITK's ``GetArrayFromImage`` uses
the same ``[z, y, x]`` layout, so only the header changes: LPS = diag(-1, -1, 1) * RAS.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["image_from_kji_array", "ijk_to_ras_from_image"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def image_from_kji_array(array: np.ndarray, ijk_to_ras: np.ndarray) -> sitk.Image:
    """A SimpleITK image with the voxels of ``array`` (K, J, I) placed by ``ijk_to_ras``.

    Args:
        array: 3D array as returned by ``slicer.util.arrayFromVolume`` (copied here).
        ijk_to_ras: 4x4 matrix from ``volumeNode.GetIJKToRASMatrix``.

    Raises:
        ValueError: array not 3D, or a singular / non-affine matrix.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (K, J, I) array, got shape {array.shape}")
    matrix = np.asarray(ijk_to_ras, dtype=float)
    if matrix.shape != (4, 4) or not np.allclose(matrix[3], (0, 0, 0, 1)):
        raise ValueError("ijk_to_ras must be a 4x4 affine matrix")
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"ijk_to_ras has a zero-length axis (spacing {spacing.tolist()})")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (_RAS_TO_LPS @ (matrix[:3, :3] / spacing)).ravel()))
    image.SetOrigin(tuple(float(v) for v in _RAS_TO_LPS @ matrix[:3, 3]))
    return image


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a 3D SimpleITK image (inverse of the header conversion above)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = _RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = _RAS_TO_LPS @ np.asarray(image.GetOrigin(), dtype=float)
    return matrix
