"""Is the input's voxel grid usable? Spacing, direction and file-header checks before inference.

ITK quietly repairs some broken headers (a NIfTI slice spacing of 0 or NaN becomes
1.0 mm, so organ volumes come out several times too small) and refuses others with
a C++ message. Each case is decided here, once, for every reader:

- spacing zero, negative, NaN or infinite (image or NIfTI ``pixdim``): refused, the
  true spacing is unknown;
- singular direction matrix, or direction columns that are not unit vectors: refused;
- non-orthogonal (sheared, e.g. gantry-tilted) direction with unit columns: handled.
  The 2D model segments each stored slice and the label map keeps the input's exact
  grid; organ volumes use the real voxel volume (spacing product x |det(direction)|);
  a warning says so. Only NIfTI cannot store such a grid, so a NIfTI output is
  refused before any work (see :func:`check_output_can_store`).
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError, OutputError

__all__ = ["check_image_geometry", "voxel_volume_mm3", "is_sheared", "check_output_can_store",
           "check_nifti_header", "explain_itk_geometry_error"]

# Direction columns may deviate from unit length / orthogonality by float noise only.
_UNIT_TOLERANCE = 1e-3
_ORTHOGONAL_TOLERANCE = 1e-4
_SINGULAR_BELOW = 1e-3
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_AXES = "xyz"


def _direction_matrix(image: sitk.Image) -> np.ndarray:
    dim = image.GetDimension()
    return np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)


def _format_vector(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def check_image_geometry(image: sitk.Image, source: str = "The input") -> List[str]:
    """Raise if ``image``'s grid cannot be segmented correctly; return warnings for grids that can.

    Args:
        image: the 3D input volume.
        source: how messages name it (a path, or e.g. "The input").

    Returns:
        Warning texts (a sheared grid), empty for an ordinary grid.

    Raises:
        InputImageError: zero/negative/NaN/infinite spacing, singular direction, or
            direction columns that are not unit vectors.
    """
    spacing = image.GetSpacing()
    for axis, value in enumerate(spacing):
        if not math.isfinite(value) or value <= 0:
            raise InputImageError(
                f"{source} has voxel spacing {_format_vector(spacing)} mm: the {_AXES[axis]} spacing {value:g} is "
                "not a positive number, so positions and volumes would be wrong.",
                "Fix the spacing in the file's header (or re-export the CT from the scanner or PACS).")
    direction = _direction_matrix(image)
    if not np.all(np.isfinite(direction)):
        raise InputImageError(f"{source} has a direction matrix with NaN or infinite values.",
                              "Fix the orientation in the file's header (or re-export the CT).")
    lengths = np.linalg.norm(direction, axis=0)
    if np.any(np.abs(lengths - 1.0) > _UNIT_TOLERANCE):
        raise InputImageError(
            f"{source} has direction columns of length {_format_vector(np.round(lengths, 4))}; each must be a unit "
            "vector (spacing belongs in the spacing field).", "Fix the orientation in the file's header.")
    determinant = float(np.linalg.det(direction))
    if abs(determinant) < _SINGULAR_BELOW:
        raise InputImageError(
            f"{source} has a singular direction matrix (determinant {determinant:.2g}): two image axes point the "
            "same way, so the volume has no defined 3D position.", "Fix the orientation in the file's header.")
    if is_sheared(image):
        angle = math.degrees(math.acos(min(1.0, abs(determinant))))
        return [f"{source} has a sheared (non-orthogonal) voxel grid, about {angle:.1f} degrees off square "
                "(e.g. a gantry-tilted CT). Each stored slice is segmented on the input's own grid and volumes "
                "use the true voxel volume, but the model was trained on square grids."]
    return []


def is_sheared(image: sitk.Image) -> bool:
    """True when ``image``'s direction columns are not mutually orthogonal."""
    direction = _direction_matrix(image)
    gram = direction.T @ direction
    return bool(np.max(np.abs(gram - np.diag(np.diag(gram)))) > _ORTHOGONAL_TOLERANCE)


def voxel_volume_mm3(image: sitk.Image) -> float:
    """Physical volume of one voxel (mm^3): the product of the spacings, times |det(direction)|
    for a sheared grid (where it is less than 1)."""
    volume = float(np.prod([float(s) for s in image.GetSpacing()]))
    if is_sheared(image):
        volume *= abs(float(np.linalg.det(_direction_matrix(image))))
    return volume


def check_output_can_store(image: sitk.Image, output: Path) -> None:
    """Refuse, before any work, an output format that cannot hold ``image``'s grid exactly.

    NIfTI stores orientation as a rotation (quaternion) or an affine that ITK coerces to
    orthogonal, so a sheared label map would no longer overlay the CT.

    Raises:
        OutputError: a sheared input with a .nii/.nii.gz output.
    """
    if str(output).lower().endswith(_NIFTI_SUFFIXES) and is_sheared(image):
        raise OutputError(f"Output {output}: NIfTI cannot store this input's sheared (non-orthogonal) grid, so "
                          "the label map would not overlay the CT.", "Write .nrrd or .mha instead.")


# --- NIfTI headers: what ITK repairs without saying so --------------------------------

def _nifti_header(path: Path) -> Optional[bytes]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            return handle.read(540)
    except (OSError, EOFError):
        return None  # unreadable: the image reader says why


@dataclass(frozen=True)
class _NiftiHeader:
    dims: List[int]
    pixdim: List[float]
    bits_per_voxel: int
    data_offset: float


def _parse_nifti_header(header: bytes) -> Optional[_NiftiHeader]:
    for order in "<>":
        size = struct.unpack(order + "i", header[:4])[0]
        if size == 348 and len(header) >= 348:
            return _NiftiHeader(list(struct.unpack(order + "8h", header[40:56])),
                                list(struct.unpack(order + "8f", header[76:108])),
                                struct.unpack(order + "h", header[72:74])[0],
                                struct.unpack(order + "f", header[108:112])[0])
        if size == 540 and len(header) >= 540:
            return _NiftiHeader(list(struct.unpack(order + "8q", header[16:80])),
                                list(struct.unpack(order + "8d", header[104:168])),
                                struct.unpack(order + "h", header[14:16])[0],
                                float(struct.unpack(order + "q", header[168:176])[0]))
    return None


def check_nifti_header(path: Path, stored_bytes: Optional[int] = None) -> None:
    """Refuse a NIfTI file whose spatial ``pixdim`` is zero, negative, NaN or infinite, or
    whose voxel data is shorter than its header says.

    ITK reads such a spacing as 1.0 mm (or flips an axis) with only a console warning,
    so a 3 mm CT stored with pixdim 0 would give volumes 3x too small; and it reads a
    truncated file as if the missing voxels were there.

    Args:
        path: the file (other extensions than .nii/.nii.gz are left to the reader).
        stored_bytes: bytes the file holds once decompressed (default: its size on disk,
            right for an uncompressed .nii).

    Raises:
        InputImageError: a bad spatial pixdim, a vox_offset that is no byte offset (NaN,
            infinite, negative), or fewer voxel bytes than the header needs.
    """
    if not path.name.lower().endswith(_NIFTI_SUFFIXES):
        return
    raw = _nifti_header(path)
    header = _parse_nifti_header(raw) if raw else None
    if header is None:
        return
    dims, pixdim = header.dims, header.pixdim
    spatial = min(max(dims[0], 0), 3)
    for axis in range(1, spatial + 1):
        value = pixdim[axis]
        if dims[axis] > 1 and (not math.isfinite(value) or value <= 0):
            raise InputImageError(
                f"{path} has NIfTI pixdim[{axis}] = {value:g} ({_AXES[axis - 1]} voxel spacing): not a positive "
                "number, so ITK would assume 1 mm and positions and volumes would be wrong.",
                "Fix the voxel spacing in the NIfTI header (or re-export the CT from its source).")
    if not math.isfinite(header.data_offset) or header.data_offset < 0:
        raise InputImageError(
            f"{path} has NIfTI vox_offset = {header.data_offset:g}: not a byte offset, so where its voxels start "
            "is unknown.", "The header is damaged: re-export the CT from its source (or copy it again).")
    rank = max(0, min(dims[0], 7))
    needed = int(header.data_offset) + int(np.prod([max(d, 1) for d in dims[1:rank + 1]])) * header.bits_per_voxel // 8
    if stored_bytes is None and not path.name.lower().endswith(".gz"):
        stored_bytes = path.stat().st_size
    if stored_bytes is not None and header.bits_per_voxel > 0 and stored_bytes < needed:
        raise InputImageError(f"{path} is truncated: its header describes {needed} bytes of image, the file holds "
                              f"{stored_bytes}.", "Copy or download the file again.")


def explain_itk_geometry_error(text: str) -> Optional[str]:
    """A plain sentence for ITK's refusals of a broken grid, or None for other errors."""
    if "determinant is 0" in text or "Bad direction" in text:
        return "its direction matrix is singular (two image axes point the same way)"
    if "Zero-valued spacing" in text or "spacing is not supported" in text:
        return "its voxel spacing is zero or not a number"
    if "Negative spacing" in text or "negative spacing" in text:
        return "its voxel spacing is negative"
    return None
