"""Reading CT volumes (NIfTI, NRRD, MHA, DICOM series folders) and writing label maps atomically."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError, OutputError

__all__ = ["WRITABLE_SUFFIXES", "read_image", "list_dicom_series", "check_ct_intensities",
           "check_output_path", "write_image_atomic"]

_log = logging.getLogger("KDSegmentationLib")
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")
PathLike = Union[str, Path]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in WRITABLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def list_dicom_series(folder: Path) -> List[Tuple[str, int, str]]:
    """(series instance UID, number of files, series description) for each series in ``folder``."""
    series = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        description = ""
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            reader.ReadImageInformation()
            if reader.HasMetaDataKey("0008|103e"):
                description = reader.GetMetaData("0008|103e").strip()
        except RuntimeError:
            pass
        series.append((uid, len(files), description))
    return series


def _read_dicom_folder(folder: Path, series_uid: Optional[str]) -> sitk.Image:
    series = list_dicom_series(folder)
    if not series:
        raise InputImageError(f"No DICOM series found in folder {folder}.",
                              "Point to a folder that contains the .dcm files of one CT series, or to a "
                              "NIfTI/NRRD/MHA file.")
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(f"{uid} ({n} files{', ' + d if d else ''})" for uid, n, d in series)
            raise InputImageError(f"Folder {folder} contains {len(series)} DICOM series: {listing}.",
                                  "Choose one with --series UID.")
        series_uid = series[0][0]
    elif series_uid not in [s[0] for s in series]:
        raise InputImageError(f"DICOM series {series_uid} is not in {folder}.",
                              f"Available series: {', '.join(s[0] for s in series)}.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"Cannot read DICOM series {series_uid} in {folder}: {_first_line(exc)}.",
                              "Check that the files are complete and not corrupt.") from None


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() or "exception" in line.lower() or "unable" in line.lower():
            return line[:300]
    return lines[-1][:300] if lines else type(exc).__name__


def read_image(path: PathLike, series_uid: Optional[str] = None) -> sitk.Image:
    """Read a 3D single-channel image and check it is one.

    Args:
        path: NIfTI/NRRD/MHA/any SimpleITK file, or a folder holding a DICOM series.
        series_uid: which series to read when a folder holds several.

    Raises:
        InputImageError: missing path, unreadable/corrupt file, empty DICOM folder,
            several series without a choice, 2D, 4D, vector or RGB image.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"Input {path} does not exist.", "Check the path.")
    if path.is_dir():
        image = _read_dicom_folder(path, series_uid)
    else:
        if path.name.lower().endswith(".gz"):
            _check_gzip_complete(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputImageError(f"Cannot read {path} as an image: {_first_line(exc)}.",
                                  "Use a valid NIfTI (.nii/.nii.gz), NRRD, MHA file or a DICOM folder.") from None
    _check_shape(image, path)
    return image


def _check_gzip_complete(path: Path) -> None:
    """ITK zero-fills a truncated .gz stream without an error, so verify the stream first."""
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise InputImageError(f"Cannot read {path}: the compressed file is truncated or corrupt ({exc}).",
                              "Copy or download the file again.") from None


def _check_shape(image: sitk.Image, path: Path) -> None:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel (a vector or RGB "
            "image); a CT volume has one.", "Use the grey-value CT volume.")
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 4:
        raise InputImageError(f"{path} is a 4D image of size {size}; a single 3D CT volume is needed.",
                              "Extract one time point/volume first.")
    if dim != 3:
        raise InputImageError(f"{path} is a {dim}D image of size {size}; a 3D CT volume is needed.",
                              "Use the whole CT volume, not a single slice or a screenshot.")
    if min(size) < 2 or sorted(size)[1] < 16:
        raise InputImageError(f"{path} has size {size}: a single slice or a line, not a 3D CT volume.",
                              "Use the whole CT volume.")


def check_ct_intensities(array: np.ndarray, source: str = "input") -> List[str]:
    """Reject NaN/inf and constant volumes; return warnings when values do not look like HU.

    Raises:
        InputImageError: non-finite values or a constant volume.
    """
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InputImageError(f"The {source} contains {bad} NaN or infinite voxel values.",
                              "Repair or re-export the volume (e.g. replace NaN by -1024 HU).")
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise InputImageError(f"The {source} is constant (every voxel is {low:g}); there is nothing to segment.",
                              "Check that the right volume was loaded.")
    warnings = []
    if high <= 1.0 + 1e-6 and low >= -1.0 - 1e-6:
        warnings.append(f"The {source}'s intensities lie in [{low:g}, {high:g}], which looks normalised, not "
                        "Hounsfield units; the model expects raw CT HU and results will be poor.")
    elif low >= 0 and high <= 255 and array.dtype == np.uint8:
        warnings.append(f"The {source} is 8-bit [{low:g}, {high:g}]: probably a screenshot or an "
                        "intensity-rescaled image, not CT in Hounsfield units; results will be poor.")
    elif low > -200:
        warnings.append(f"The {source}'s lowest value is {low:g}: CT in Hounsfield units contains air "
                        "(about -1000 HU). This may be MR or a rescaled image; results will be poor.")
    for text in warnings:
        _log.warning(text)
    return warnings


def check_output_path(path: PathLike) -> Path:
    """Fail early (before any computation) if ``path`` cannot be written."""
    path = Path(path)
    if _suffix(path) not in WRITABLE_SUFFIXES:
        raise OutputError(f"Output {path} has an unsupported extension.",
                          f"Use one of {', '.join(WRITABLE_SUFFIXES)}.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"Output folder {parent} does not exist.", "Create it or choose another output path.")
    if path.is_dir():
        raise OutputError(f"Output {path} is a folder.", "Give a file name such as seg.nii.gz.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"Output folder {parent} is not writable.", "Choose a folder you can write to.")
    return path


def write_image_atomic(image: sitk.Image, path: PathLike) -> Path:
    """Write via a temporary file in the same folder and rename, so no partial file is ever left."""
    path = check_output_path(path)
    suffix = _suffix(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name.split(".")[0] + ".", suffix=".tmp" + suffix,
                               dir=str(path.parent))
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=True)
        os.replace(tmp, path)
    except RuntimeError as exc:
        raise OutputError(f"Cannot write {path}: {_first_line(exc)}.", "Check free disk space and permissions.") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
