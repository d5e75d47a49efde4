"""Canonical slice orientation shared by inference and training.

Models see axial slices in one fixed in-plane orientation whatever the file's
direction matrix: the image is permuted/flipped (no interpolation) to DICOM LPS,
so the array is ``[z, y, x]`` with x running right->left, y anterior->posterior
and z inferior->superior. A slice ``array[z]`` is then displayed as radiologists
read it (patient's right on the image's left, anterior at the top).

Training readers call :func:`to_canonical` on NIfTI/DICOM inputs so that the
weights learn the orientation the Lib feeds them at inference time. The pipeline
uses :class:`CanonicalAxes` instead: the same voxels as a numpy view of the input's
own array (no copy of the CT, and the label map is written straight in the input's
orientation).
"""

from __future__ import annotations

import itertools
from typing import Tuple

import numpy as np
import SimpleITK as sitk

__all__ = ["CANONICAL_ORIENTATION", "CanonicalAxes", "orientation_code", "to_canonical", "from_canonical"]

CANONICAL_ORIENTATION = "LPS"


def orientation_code(image: sitk.Image) -> str:
    """Three-letter DICOM orientation code closest to ``image``'s direction (e.g. "LPS", "RAS")."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Permute and flip a 3D image's axes to the canonical LPS orientation.

    Voxel values are moved, never interpolated; physical positions are unchanged.

    Args:
        image: 3D SimpleITK image with any direction matrix.

    Returns:
        The same voxels on an LPS-ordered grid; ``GetArrayFromImage`` gives ``[z, y, x]``.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"to_canonical expects a 3D image, got {image.GetDimension()}D")
    if orientation_code(image) == CANONICAL_ORIENTATION:
        return image
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def from_canonical(canonical: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Bring an image computed on the canonical grid back onto ``reference``'s exact grid.

    Args:
        canonical: image on the grid that ``to_canonical(reference)`` produced.
        reference: the original input image.

    Returns:
        An image with ``reference``'s size, spacing, origin and direction, bit for bit.
    """
    back = canonical
    code = orientation_code(reference)
    if code != CANONICAL_ORIENTATION:
        back = sitk.DICOMOrient(canonical, code)
    if back.GetSize() != reference.GetSize():
        raise ValueError(
            f"canonical image of size {canonical.GetSize()} does not map back onto "
            f"reference size {reference.GetSize()}"
        )
    # The permutation is exact, so only floating-point noise separates the headers;
    # copying them makes the output overlay the input bit for bit.
    back.CopyInformation(reference)
    return back


class CanonicalAxes:
    """The axis permutation and flips of :func:`to_canonical`, applied to numpy arrays as views.

    ``CanonicalAxes(image).view(sitk.GetArrayViewFromImage(image))`` equals
    ``sitk.GetArrayFromImage(to_canonical(image))`` voxel for voxel without copying,
    and a label array of the input's shape written through ``view`` is already in the
    input's orientation. The permutation is the one ITK's ``DICOMOrient`` itself picks
    (read off a 2 x 3 x 4 probe image with the same direction), so the two can never
    disagree, oblique directions included.

    Args:
        image: a 3D image; only its direction matrix (and dimension) is used.

    Attributes:
        permutation: numpy axes of the input array in canonical (z, y, x) order.
        flipped: canonical numpy axes that run backwards in the input array.
        spacing: canonical voxel spacing (x, y, z) in mm, as ``to_canonical(image).GetSpacing()``.
    """

    def __init__(self, image: sitk.Image) -> None:
        if image.GetDimension() != 3:
            raise ValueError(f"CanonicalAxes expects a 3D image, got {image.GetDimension()}D")
        self.permutation, self.flipped = _dicom_orient_axes(image.GetDirection())
        spacing = image.GetSpacing()  # (x, y, z) = numpy axes (2, 1, 0)
        self.spacing: Tuple[float, float, float] = tuple(  # type: ignore[assignment]
            spacing[2 - self.permutation[2 - axis]] for axis in range(3))

    def view(self, array: np.ndarray) -> np.ndarray:
        """``array`` (Z, Y, X) in the input's orientation, seen on the canonical grid (a view)."""
        if array.ndim != 3:
            raise ValueError(f"expected a (Z, Y, X) array, got shape {array.shape}")
        moved = array.transpose(self.permutation)
        return np.flip(moved, self.flipped) if self.flipped else moved


def _dicom_orient_axes(direction: Tuple[float, ...]) -> Tuple[Tuple[int, int, int], Tuple[int, ...]]:
    """(numpy permutation, flipped canonical axes) that DICOMOrient applies for ``direction``."""
    probe_array = np.arange(24, dtype=np.uint8).reshape(4, 3, 2)  # distinct sizes identify each axis
    probe = sitk.GetImageFromArray(probe_array)
    probe.SetDirection(direction)
    oriented = sitk.GetArrayFromImage(to_canonical(probe))
    for permutation in itertools.permutations(range(3)):
        moved = probe_array.transpose(permutation)
        if moved.shape != oriented.shape:
            continue
        for flips in itertools.product((False, True), repeat=3):
            flipped = tuple(axis for axis in range(3) if flips[axis])
            if np.array_equal(np.flip(moved, flipped) if flipped else moved, oriented):
                return permutation, flipped  # type: ignore[return-value]
    raise ValueError(f"DICOMOrient moved the voxels of direction {direction} in a way that is not a permutation")
