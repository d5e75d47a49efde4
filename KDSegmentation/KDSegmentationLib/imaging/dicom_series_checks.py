"""Slice-by-slice checks of a DICOM series before its pixels are read.

ITK stacks a series on a uniform grid whatever the files say: with a missing,
unreadable or duplicated slice it spreads the rest evenly (misplacing slices by up
to a slice spacing) and only prints a console warning. Here every file's position and
orientation are checked and the series is decided before inference (from the tags the
series reader keeps while reading the pixels, or, when that read fails, from a pass
over the headers alone):

- a file in the folder with a DICOM preamble that GDCM cannot parse, a missing slice
  (a gap of about a multiple of the spacing), a duplicated position, non-uniform
  spacing, or slices with different orientations: refused, naming the positions
  (mm along the slice normal) or files. The label map must have the input's grid,
  and no uniform grid holds these slices where they are.
- slices evenly spaced along a line that is not the slice normal (gantry tilt):
  handled. ITK would stack them as if square; :meth:`SeriesGrid.place` puts the
  image on the true sheared grid, and the geometry check then warns about the shear
  (:mod:`.input_geometry`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError

__all__ = ["SliceHeader", "SeriesGrid", "read_slice_headers", "series_reader_slice_headers", "series_grid",
           "unreadable_dicom_files"]

# Positions may differ from a perfect grid by this fraction of the spacing (float
# noise in ImagePositionPatient); beyond it a slice would be misplaced visibly.
_POSITION_TOLERANCE = 0.05
_ORIENTATION_TOLERANCE = 1e-3
_LISTED = 5
_POSITION_TAG = "0020|0032"  # ImagePositionPatient
_ORIENTATION_TAG = "0020|0037"  # ImageOrientationPatient


@dataclass(frozen=True)
class SliceHeader:
    """What one DICOM file says about where its slice is.

    Args:
        path: the file.
        position: ImagePositionPatient (mm, LPS), shape (3,).
        orientation: ImageOrientationPatient row and column cosines, shape (6,).
    """

    path: str
    position: np.ndarray
    orientation: np.ndarray


@dataclass(frozen=True)
class SeriesGrid:
    """The true 3D grid of a checked series.

    Args:
        ordered_files: the files in the order to stack them.
        origin: position of the first of them (mm, LPS), shape (3,).
        slice_step: vector from one slice to the next (mm), shape (3,).
        tilted: the step is not along the slice normal (gantry tilt).
    """

    ordered_files: Tuple[str, ...]
    origin: np.ndarray
    slice_step: np.ndarray
    tilted: bool = False

    def place(self, image: sitk.Image) -> sitk.Image:
        """Give ``image`` (read from :attr:`ordered_files`) this grid where ITK assumed a square one.

        An untilted series is returned as ITK read it (its grid already matches).
        """
        if not self.tilted:
            return image
        direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
        step_length = float(np.linalg.norm(self.slice_step))
        direction[:, 2] = self.slice_step / step_length
        image.SetDirection(direction.ravel().tolist())
        image.SetSpacing((image.GetSpacing()[0], image.GetSpacing()[1], step_length))
        image.SetOrigin(self.origin.tolist())
        return image


def _floats(text: str, count: int) -> Optional[np.ndarray]:
    try:
        values = np.array([float(v) for v in text.strip().split("\\")], dtype=float)
    except ValueError:
        return None
    return values if values.shape == (count,) and np.all(np.isfinite(values)) else None


def _slice_header(name: str, folder: Path, position_text: Optional[str],
                  orientation_text: Optional[str]) -> SliceHeader:
    position = _floats(position_text, 3) if position_text is not None else None
    orientation = _floats(orientation_text, 6) if orientation_text is not None else None
    if position is None or orientation is None:
        raise InputImageError(f"DICOM file {name} in {folder} has no valid ImagePositionPatient/"
                              "ImageOrientationPatient, so its slice cannot be placed.",
                              "Use a CT series exported with its geometry (not a secondary capture).")
    return SliceHeader(name, position, orientation)


def read_slice_headers(files: Sequence[str], folder: Path) -> List[SliceHeader]:
    """Read each file's position and orientation (headers only).

    Raises:
        InputImageError: a file cannot be parsed or lacks a valid position/orientation.
    """
    headers = []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise InputImageError(f"DICOM file {name} in {folder} cannot be read.",
                                  "Re-copy or re-export the series; the file is damaged.") from None
        headers.append(_slice_header(name, folder, *(reader.GetMetaData(key) if reader.HasMetaDataKey(key) else None
                                                     for key in (_POSITION_TAG, _ORIENTATION_TAG))))
    return headers


def series_reader_slice_headers(reader: sitk.ImageSeriesReader, folder: Path) -> List[SliceHeader]:
    """The same as :func:`read_slice_headers`, from the tags ``reader`` kept while it read the pixels.

    Saves a second pass over the files (a third of a DICOM read, ``benchmarks/read_volume.py``).

    Args:
        reader: executed with ``MetaDataDictionaryArrayUpdateOn()``; slice i is its i-th file.
        folder: for messages.

    Raises:
        InputImageError: a file lacks a valid position/orientation.
    """
    return [_slice_header(name, folder, *(reader.GetMetaData(i, key) if reader.HasMetaDataKey(i, key) else None
                                          for key in (_POSITION_TAG, _ORIENTATION_TAG)))
            for i, name in enumerate(reader.GetFileNames())]


def _positions_text(values: Sequence[float]) -> str:
    shown = ", ".join(f"{v:.2f}" for v in values[:_LISTED])
    return shown + (f" and {len(values) - _LISTED} more" if len(values) > _LISTED else "")


def series_grid(headers: Sequence[SliceHeader], folder: Path) -> SeriesGrid:
    """Check that the slices form one evenly spaced stack and return its true grid.

    Args:
        headers: one per file of the series (any order), at least 2.
        folder: for messages.

    Returns:
        The grid; ``ordered_files`` keeps ``headers``' order unless the series is tilted.

    Raises:
        InputImageError: different orientations, duplicated positions, missing slices,
            non-uniform spacing, or positions off one line; the message lists the
            positions concerned.
    """
    if len(headers) < 2:  # a single slice: the volume-shape check says what to pass instead
        return SeriesGrid(tuple(h.path for h in headers), headers[0].position, np.zeros(3))
    first = headers[0].orientation
    tilted = [h for h in headers if np.max(np.abs(h.orientation - first)) > _ORIENTATION_TOLERANCE]
    if tilted:
        raise InputImageError(
            f"DICOM series in {folder} mixes slice orientations ({len(tilted)} of {len(headers)} slices differ from "
            f"the first, e.g. {Path(tilted[0].path).name}); it is not one 3D volume.",
            "Select the files of one acquisition (a localizer or reformat may be mixed in).")
    normal = np.cross(first[:3], first[3:])
    normal /= np.linalg.norm(normal)
    ordered = sorted(headers, key=lambda h: float(h.position @ normal))
    along = np.array([float(h.position @ normal) for h in ordered])
    gaps = np.diff(along)
    spacing = float(np.median(gaps))
    tolerance = _POSITION_TOLERANCE * max(spacing, 1e-6)
    duplicates = [along[i + 1] for i in np.flatnonzero(gaps <= tolerance)]
    if duplicates or spacing <= 0:
        raise InputImageError(
            f"DICOM series in {folder} has {len(duplicates)} duplicated slice position(s) at "
            f"{_positions_text(duplicates)} mm along the slice normal.",
            "Remove the duplicate files (the same slice copied twice, or two series sharing a UID).")
    missing = []
    uneven = []
    for i, gap in enumerate(gaps):
        steps = gap / spacing
        if abs(steps - 1.0) * spacing <= tolerance:
            continue
        if steps > 1.5 and abs(steps - round(steps)) * spacing <= tolerance:
            missing.extend(along[i] + spacing * k for k in range(1, int(round(steps))))
        else:
            uneven.append(along[i + 1])
    if missing:
        raise InputImageError(
            f"DICOM series in {folder} is missing {len(missing)} slice(s) at {_positions_text(missing)} mm along "
            f"the slice normal (spacing {spacing:.3g} mm); stacking the rest would misplace slices.",
            "Copy or export the complete series again.")
    if uneven:
        raise InputImageError(
            f"DICOM series in {folder} is not evenly spaced (median {spacing:.3g} mm; slices at "
            f"{_positions_text(uneven)} mm break the pattern); a uniform grid would misplace them.",
            "Resample the series to even spacing (e.g. in 3D Slicer) and segment the result.")
    step = (ordered[-1].position - ordered[0].position) / (len(ordered) - 1)
    off_line = max(float(np.linalg.norm(h.position - ordered[0].position - k * step)) for k, h in enumerate(ordered))
    if off_line > tolerance:
        raise InputImageError(
            f"DICOM series in {folder} has slices that do not lie on one line (up to {off_line:.2f} mm off); "
            "it is not one 3D volume.", "Select the files of one acquisition.")
    if float(np.linalg.norm(step - (step @ normal) * normal)) > tolerance:
        return SeriesGrid(tuple(h.path for h in ordered), ordered[0].position, step, tilted=True)
    # ITK stacks GDCM's order exactly as before; only the checks are new.
    return SeriesGrid(tuple(h.path for h in headers), headers[0].position, step)


def unreadable_dicom_files(folder: Path, readable: Sequence[str]) -> List[str]:
    """Files directly in ``folder`` that carry a DICOM preamble, belong to no series GDCM
    found, and whose header cannot be parsed (a DICOMDIR or a report parses and is not listed)."""
    known = {os.path.normcase(os.path.abspath(name)) for name in readable}
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        try:
            if not entry.is_file():
                continue
            with open(entry.path, "rb") as handle:
                preamble = handle.read(132)[128:]
        except OSError:
            continue
        if preamble == b"DICM" and os.path.normcase(os.path.abspath(entry.path)) not in known:
            reader = sitk.ImageFileReader()
            reader.SetFileName(entry.path)
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                found.append(entry.name)
    return found
