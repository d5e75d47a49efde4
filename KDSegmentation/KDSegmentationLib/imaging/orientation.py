"""Canonical slice orientation shared by inference and training.

Models see axial slices in one fixed in-plane orientation whatever the file's
direction matrix: the image is permuted/flipped (no interpolation) to DICOM LPS,
so the array is ``[z, y, x]`` with x running right->left, y anterior->posterior
and z inferior->superior. A slice ``array[z]`` is then displayed as radiologists
read it (patient's right on the image's left, anterior at the top).

Training readers call :func:`to_canonical` on NIfTI/DICOM inputs so that the
weights learn the orientation the Lib feeds them at inference time.
"""

from __future__ import annotations

import SimpleITK as sitk

__all__ = ["CANONICAL_ORIENTATION", "orientation_code", "to_canonical", "from_canonical"]

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
