"""Read a just-written image back and compare it with the image that was meant.

The atomic-write helper's ``verify`` step for label maps (see
:mod:`KDSegmentationLib.written_file_checks`): ITK's NIfTI writer reports a full disk
only on the console, and ITK reads a truncated .nii.gz as a valid image whose
missing part is zeros, so only reading the file back shows that it is complete.
Cost: one read of the file just written (a few % of a run; the label map is uint8). A
plain .nii.gz is not even built into an image: its header is read by ITK and its
voxels, decompressed once with the CRC checked, are compared piece by piece with the
image that was meant (half the cost of reading it back whole, ``benchmarks/read_volume.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from ..written_file_checks import WrittenFileMismatch
from .native_messages import native_messages_captured
from .nifti_gzip import PlainNiftiGz, inflate_gzip, plain_nifti_gz

__all__ = ["image_check"]

PathLike = Union[str, Path]
# Headers store geometry as float32 (NIfTI) or decimal text (NRRD): equal within these.
_SPACING_RTOL = 1e-5
_ORIGIN_ATOL_MM = 1e-3
_DIRECTION_ATOL = 1e-4


def _gzip_complete(path: Path) -> bool:
    try:
        inflate_gzip(path, 0, 0, lambda piece, start: None)  # the stream's CRC and length, no byte kept
    except InputImageError:
        return False
    return True


def _read_back(path: Path) -> sitk.Image:
    if path.name.lower().endswith(".gz") and not _gzip_complete(path):
        raise WrittenFileMismatch("is a truncated compressed stream")
    return sitk.ReadImage(str(path))


def _grid(image: Union[sitk.Image, sitk.ImageFileReader]) -> Tuple[tuple, int, int, tuple, tuple, tuple]:
    """(size, pixel type, components, spacing, origin, direction) of an image or of a header read by ITK."""
    if isinstance(image, sitk.ImageFileReader):
        return (image.GetSize(), image.GetPixelID(), image.GetNumberOfComponents(), image.GetSpacing(),
                image.GetOrigin(), image.GetDirection())
    return (image.GetSize(), image.GetPixelID(), image.GetNumberOfComponentsPerPixel(), image.GetSpacing(),
            image.GetOrigin(), image.GetDirection())


def _check_grid(written: Tuple[tuple, int, int, tuple, tuple, tuple], expected: sitk.Image) -> None:
    size, pixel_id, components, spacing, origin, direction = written
    if (size, pixel_id, components) != _grid(expected)[:3]:
        raise WrittenFileMismatch(f"reads back as {sitk.GetPixelIDValueAsString(pixel_id)} of size "
                                  f"{size}, not {expected.GetSize()}")
    if not (np.allclose(spacing, expected.GetSpacing(), rtol=_SPACING_RTOL, atol=0)
            and np.allclose(origin, expected.GetOrigin(), rtol=0, atol=_ORIGIN_ATOL_MM)
            and np.allclose(direction, expected.GetDirection(), rtol=0, atol=_DIRECTION_ATOL)):
        raise WrittenFileMismatch("reads back with a different spacing, origin or direction")


def _check_plain_nifti_gz(plain: PlainNiftiGz, expected: sitk.Image) -> None:
    """The voxels of ``plain`` against ``expected``'s buffer, piece by piece as they are decompressed."""
    _check_grid(_grid(plain.header), expected)
    meant = sitk.GetArrayViewFromImage(expected).reshape(-1).view(np.uint8)
    differs = []

    def compare(piece: np.ndarray, start: int) -> None:
        if not differs and not np.array_equal(piece, meant[start:start + piece.size]):
            differs.append(start)

    plain.inflate_voxels(compare)  # the whole stream, so that its CRC is checked
    if differs:
        raise WrittenFileMismatch("reads back with different voxel values")


def image_check(expected: sitk.Image) -> Callable[[PathLike], None]:
    """A verifier that reads the written image back and compares it with ``expected``.

    Compared: size, voxel type, components, spacing, origin and direction (within the
    header's storage precision) and every voxel value (exactly). A .gz file's stream
    must also be complete, because ITK fills a truncated one with zeros.

    Args:
        expected: the image that was passed to the writer.

    Returns:
        ``verify(path)``, raising :class:`WrittenFileMismatch` on any difference.
    """

    def verify(path: PathLike) -> None:
        path = Path(path)
        try:
            with native_messages_captured(f"verifying {path.name}", descriptor=True):
                plain = plain_nifti_gz(path) if path.name.lower().endswith(".nii.gz") else None
                if plain is not None and plain.scaling is None:  # stored bytes are the voxels: compare them
                    _check_plain_nifti_gz(plain, expected)
                    return
                written = _read_back(path)
        except (RuntimeError, InputImageError):
            raise WrittenFileMismatch("cannot be read back") from None
        _check_grid(_grid(written), expected)
        if not np.array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(expected)):
            raise WrittenFileMismatch("reads back with different voxel values")

    return verify
