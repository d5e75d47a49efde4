"""Read a just-written image back and compare it with the image that was meant.

The atomic-write helper's ``verify`` step for label maps (see
:mod:`KDSegmentationLib.written_file_checks`): ITK's NIfTI writer reports a full disk
only on the console, and ITK reads a truncated .nii.gz as a valid image whose
missing part is zeros, so only reading the file back shows that it is complete.
Cost: one read of the file just written (a few % of a run; the label map is uint8).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Callable, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from ..written_file_checks import WrittenFileMismatch
from .native_messages import native_messages_captured
from .nifti_gzip import read_nifti_gz

__all__ = ["image_check"]

PathLike = Union[str, Path]
# Headers store geometry as float32 (NIfTI) or decimal text (NRRD): equal within these.
_SPACING_RTOL = 1e-5
_ORIGIN_ATOL_MM = 1e-3
_DIRECTION_ATOL = 1e-4


def _gzip_complete(path: Path) -> bool:
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error):
        return False
    return True


def _read_back(path: Path) -> sitk.Image:
    if path.name.lower().endswith(".nii.gz"):
        image = read_nifti_gz(path)  # one CRC-checked decode; InputImageError when truncated
        if image is not None:
            return image
    if path.name.lower().endswith(".gz") and not _gzip_complete(path):
        raise WrittenFileMismatch("is a truncated compressed stream")
    return sitk.ReadImage(str(path))


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
        try:
            with native_messages_captured(f"verifying {Path(path).name}", descriptor=True):
                written = _read_back(Path(path))
        except (RuntimeError, InputImageError):
            raise WrittenFileMismatch("cannot be read back") from None
        if (written.GetSize(), written.GetPixelID(), written.GetNumberOfComponentsPerPixel()) != \
                (expected.GetSize(), expected.GetPixelID(), expected.GetNumberOfComponentsPerPixel()):
            raise WrittenFileMismatch(f"reads back as {written.GetPixelIDTypeAsString()} of size "
                                            f"{written.GetSize()}, not {expected.GetSize()}")
        if not (np.allclose(written.GetSpacing(), expected.GetSpacing(), rtol=_SPACING_RTOL, atol=0)
                and np.allclose(written.GetOrigin(), expected.GetOrigin(), rtol=0, atol=_ORIGIN_ATOL_MM)
                and np.allclose(written.GetDirection(), expected.GetDirection(), rtol=0, atol=_DIRECTION_ATOL)):
            raise WrittenFileMismatch("reads back with a different spacing, origin or direction")
        if not np.array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(expected)):
            raise WrittenFileMismatch("reads back with different voxel values")

    return verify
