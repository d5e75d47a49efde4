"""Reading CT volumes (NIfTI, NRRD, MHA, DICOM series folders) and writing label maps atomically.

Reading validates what the pipeline needs: one 3D, single-component volume on a
grid whose positions can be trusted (NIfTI pixdim and DICOM slice positions are
checked, see :mod:`.input_geometry` and :mod:`.dicom_series_checks`). Every failure is
an :class:`~KDSegmentationLib.errors.InputImageError` naming the file and the fix,
never a raw ITK exception, and ITK's console output is kept from the user
(:mod:`.native_messages`). Reads run on a worker thread so that Ctrl-C stops them.
Writing goes through a temporary file in the target folder and a rename, so a failure
or Ctrl-C never leaves a partial file and an existing file is only replaced by a
complete one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import List, Optional, Tuple, Union

import SimpleITK as sitk

from ..atomic_files import TEMPORARY_MARK, Verify, atomic_file, temporary_sibling
from ..errors import InputImageError, OutputError, WriteVerificationError
from ..interruptible_call import call_interruptibly
from .dicom_series_checks import SeriesGrid, read_slice_headers, series_grid, series_reader_slice_headers, \
    unreadable_dicom_files
from .input_geometry import check_nifti_header, explain_itk_geometry_error
from .native_messages import native_messages_captured
from .path_guards import check_input_path, special_entries_in_folder
from .written_image_check import image_check
from .nifti_gzip import inflate_gzip, read_nifti_gz

__all__ = ["WRITABLE_SUFFIXES", "read_image", "list_dicom_series", "check_volume_shape",
           "check_output_path", "write_image_atomic"]

_log = logging.getLogger("KDSegmentationLib")
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
PathLike = Union[str, Path]
# How deep to look for DICOM series below a folder that has none itself (a typical
# export is PATIENT/STUDY/SERIES/*.dcm).
_DICOM_SEARCH_DEPTH = 3


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in WRITABLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _looks_like_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _series_ids(folder: Union[str, Path]) -> Tuple[str, ...]:
    # GDCM warns on stderr when a folder has no series; that case becomes one clear error.
    with native_messages_captured(f"scanning {folder}"):
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ())


def _series_files(folder: Union[str, Path], uid: str) -> Tuple[str, ...]:
    with native_messages_captured(f"listing series {uid!r} in {folder}"):
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))


def _uid_text(uid: str) -> str:
    """A series UID as the user types it after --series (an empty UID is ``""``)."""
    return uid if uid else '""'


def _series_in(folder: Union[str, Path]) -> List[Tuple[str, Tuple[str, ...]]]:
    """(series UID, its files in GDCM's order) for each series directly in ``folder``: one scan per series."""
    return [(uid, _series_files(folder, uid)) for uid in _series_ids(folder)]


def _series_description(first_file: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(first_file)
    try:
        with native_messages_captured(f"reading the header of {first_file}"):
            reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData("0008|103e").strip() if reader.HasMetaDataKey("0008|103e") else ""


def _series_text(uid: str, files: Tuple[str, ...]) -> str:
    description = _series_description(files[0])
    return f"{_uid_text(uid)} ({len(files)} files{', ' + description if description else ''})"


def list_dicom_series(folder: Path) -> List[Tuple[str, int, str]]:
    """Each DICOM series directly in ``folder``: (series instance UID, number of files, description).

    Args:
        folder: a folder of DICOM files (not searched recursively).

    Returns:
        One tuple per series, in GDCM's order; empty if the folder has no readable series.
    """
    return [(uid, len(files), _series_description(files[0])) for uid, files in _series_in(folder)]


def _folders_with_series(folder: Path) -> List[Path]:
    found = []
    for root, dirs, _files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        if depth >= _DICOM_SEARCH_DEPTH:
            dirs[:] = []
        dirs.sort()
        if depth and _series_ids(root):
            found.append(Path(root))
    return found


def _refuse_special_entries(folder: Path) -> None:
    special = special_entries_in_folder(folder)
    if special:
        raise InputImageError(f"Folder {folder} contains entries that are not regular files or folders (named "
                              f"pipes, devices, sockets or broken/looping links): {', '.join(special[:5])}"
                              f"{' ...' if len(special) > 5 else ''}; a DICOM scan would hang or fail on them.",
                              "Remove them or copy the DICOM files to a folder of their own.")


def _read_dicom_folder(folder: Path, series_uid: Optional[str]) -> sitk.Image:
    _refuse_special_entries(folder)
    series = _series_in(folder)  # GDCM scans the folder once per series, not once per question
    if not series:
        below = _folders_with_series(folder)
        if below:
            listing = ", ".join(str(p) for p in below[:10]) + (" ..." if len(below) > 10 else "")
            raise InputImageError(f"Folder {folder} holds no DICOM files itself; its subfolders {listing} "
                                  "contain DICOM series.", "Pass the folder of the one series to segment.")
        raise InputImageError(f"No DICOM series found in folder {folder}.",
                              "Point to a folder that contains the .dcm files of one CT series, or to a "
                              "NIfTI/NRRD/MHA file.")
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(_series_text(uid, files) for uid, files in series)
            empty = ' (--series "" selects the series whose UID is empty)' if any(not s[0] for s in series) else ""
            raise InputImageError(f"Folder {folder} contains {len(series)} DICOM series: {listing}.",
                                  f"Choose one with --series UID{empty} (in Python: read_image(folder, "
                                  "series_uid=UID)).")
        series_uid = series[0][0]
    elif series_uid not in [s[0] for s in series]:
        raise InputImageError(f"DICOM series {_uid_text(series_uid)} is not in {folder}.",
                              f"Choose one of: {', '.join(_uid_text(s[0]) for s in series)}.")
    files = dict(series)[series_uid]
    all_series_files = [f for _uid, series_files in series for f in series_files]
    with native_messages_captured(f"checking the files of {folder}"):
        if unreadable_dicom_files(folder, all_series_files):
            _checked_series_grid(folder, files, all_series_files)  # names them (and misplaced slices)
    # One pass over the files: the reader keeps each slice's tags, and the slice
    # positions are checked from those before anything is computed on the image.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    image = _execute_series_reader(reader, folder, series_uid, files, all_series_files)
    with native_messages_captured(f"checking the slices of {folder}"):
        grid = series_grid(series_reader_slice_headers(reader, folder), folder)
    if grid.ordered_files != tuple(files):  # a tilted series is stacked in its own order
        reader.SetFileNames(list(grid.ordered_files))
        reader.MetaDataDictionaryArrayUpdateOff()
        image = _execute_series_reader(reader, folder, series_uid, files, all_series_files)
    return grid.place(image)


def _execute_series_reader(reader: sitk.ImageSeriesReader, folder: Path, series_uid: str, files: Tuple[str, ...],
                           all_series_files: List[str]) -> sitk.Image:
    try:
        with native_messages_captured(f"reading DICOM series in {folder}"):
            return call_interruptibly(reader.Execute)
    except RuntimeError as exc:
        reason = _first_line(exc)
    with native_messages_captured(f"checking the slices of {folder}"):
        _checked_series_grid(folder, files, all_series_files)  # names damaged or misplaced slices if that is why
    raise InputImageError(f"Cannot read DICOM series {_uid_text(series_uid)} in {folder}: {reason}.",
                          "Check that the files are complete and not corrupt.")


def _checked_series_grid(folder: Path, files: Tuple[str, ...], all_series_files: List[str]) -> SeriesGrid:
    """The series' true grid, or one InputImageError naming unreadable files and misplaced positions."""
    unreadable = unreadable_dicom_files(folder, all_series_files)
    try:
        grid = series_grid(read_slice_headers(files, folder), folder)
    except InputImageError as exc:
        if not unreadable:
            raise
        grid_problem = f"; {exc.message.rstrip('.')}"
    else:
        if not unreadable:
            return grid
        grid_problem = ""
    raise InputImageError(f"{len(unreadable)} DICOM file(s) in {folder} cannot be read "
                          f"({', '.join(unreadable[:5])}{' ...' if len(unreadable) > 5 else ''}){grid_problem}.",
                          "Copy or export the complete series again; the files are damaged.")


def _first_line(exc: Exception) -> str:
    """The informative line of an ITK exception (not the C++ source location)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [re.sub(r"^(Exception thrown in SimpleITK \w+: )?\S+\.(cxx|hxx|h):\d+:\s*", "", line)
             for line in lines]
    lines = [re.sub(r"^(ITK ERROR|itk::ERROR|sitk::ERROR):\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?", "", line)
             for line in lines if line]
    for line in lines:
        if any(word in line.lower() for word in ("error", "unable", "could not", "cannot", "fail")):
            return line[:300].rstrip(":. ")
    return lines[-1][:300].rstrip(":. ") if lines else type(exc).__name__


def read_image(path: PathLike, series_uid: Optional[str] = None) -> sitk.Image:
    """Read a 3D single-channel image and check it is one.

    Args:
        path: NIfTI/NRRD/MHA/any SimpleITK file, or a folder holding a DICOM series.
        series_uid: which series to read when a folder holds several.

    Returns:
        The image as stored (any orientation, voxel type as in the file; DICOM values
        rescaled to HU by GDCM).

    Raises:
        InputImageError: missing path, FIFO/device/link loop, unreadable/corrupt file,
            NIfTI pixdim zero/negative/NaN, ITK-refused spacing or direction, empty DICOM
            folder, several series without a choice, DICOM slices missing, duplicated,
            unevenly spaced, unreadable or differently oriented, 2D, 4D, vector or RGB image.
    """
    path = Path(path).expanduser()
    check_input_path(path)
    if path.is_dir():
        image = _read_dicom_folder(path, series_uid)
    else:
        check_nifti_header(path)  # ITK would repair a bad pixdim silently
        # A plain .nii.gz is decompressed once, CRC-checked; other files go through ITK's reader.
        image = None
        if path.name.lower().endswith(".nii.gz"):
            with native_messages_captured(f"reading {path}"):
                image = call_interruptibly(lambda: read_nifti_gz(path))
        if image is None:
            image = _read_file(path)
    single_dicom_file = path.is_file() and _looks_like_dicom_file(path)
    check_volume_shape(image, str(path), single_dicom_file)
    _log.info("Read %s: size %s, spacing %s mm, %s", path, image.GetSize(),
              tuple(round(s, 3) for s in image.GetSpacing()), image.GetPixelIDTypeAsString())
    return image


def _read_file(path: Path) -> sitk.Image:
    if path.name.lower().endswith(".gz"):
        check_nifti_header(path, stored_bytes=_check_gzip_complete(path))
    try:
        with native_messages_captured(f"reading {path}"):
            return call_interruptibly(lambda: sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        geometry = explain_itk_geometry_error(str(exc))
        if geometry:
            raise InputImageError(f"Cannot read {path}: {geometry}.", "Fix the spacing and orientation in the "
                                  "file's header (or re-export the CT).") from None
        raise InputImageError(f"Cannot read {path} as an image: {_first_line(exc)}.",
                              "Use a valid NIfTI (.nii/.nii.gz), NRRD, MHA file or a DICOM folder.") from None


def _check_gzip_complete(path: Path) -> int:
    """ITK zero-fills a truncated .gz stream without an error, so verify the stream first.

    The stream is decompressed by :func:`.nifti_gzip.inflate_gzip` (ISA-L when installed,
    about twice the standard library's speed) and the bytes are dropped.

    Returns:
        The decompressed size in bytes.

    Raises:
        InputImageError: the stream is truncated or corrupt.
    """
    return inflate_gzip(path, 0, 0, lambda piece, start: None)  # no byte is wanted, only the verification


def check_volume_shape(image: sitk.Image, source: str = "The input", single_dicom_file: bool = False) -> None:
    """Raise unless ``image`` is a 3D single-component volume with at least 2 slices.

    Args:
        image: the image to check.
        source: how messages name it (a path, or e.g. "The input").
        single_dicom_file: the image came from one DICOM file (the hint then says to
            pass the series folder).

    Raises:
        InputImageError: vector/RGB, 2D, 4D or single-slice images.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"{source} has {image.GetNumberOfComponentsPerPixel()} components per voxel (a vector or RGB "
            "image); a CT volume has one.", "Use the grey-value CT volume.")
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 4:
        raise InputImageError(f"{source} is a 4D image of size {size}; a single 3D CT volume is needed.",
                              "Extract one time point/volume first.")
    whole = ("Pass the folder that holds the whole DICOM series." if single_dicom_file
             else "Use the whole CT volume, not a single slice or a screenshot.")
    if dim != 3:
        raise InputImageError(f"{source} is a {dim}D image of size {size}; a 3D CT volume is needed.", whole)
    if min(size) < 2 or sorted(size)[1] < 16:
        raise InputImageError(f"{source} has size {size}: a single slice or a line, not a 3D CT volume.", whole)


def check_output_path(path: PathLike) -> Path:
    """Fail early (before any computation) if ``path`` cannot be written.

    Raises:
        OutputError: unsupported extension, missing or read-only folder, path is a folder.
    """
    path = Path(path).expanduser()
    if _suffix(path) not in WRITABLE_SUFFIXES:
        raise OutputError(f"Output {path} has an unsupported extension.",
                          f"Use one of {', '.join(WRITABLE_SUFFIXES)}.")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"Output folder {parent} is a file, not a folder.", "Choose another output path.")
    if not parent.is_dir():
        raise OutputError(f"Output folder {parent} does not exist.", "Create it or choose another output path.")
    if path.is_dir():
        raise OutputError(f"Output {path} is a folder.", "Give a file name such as seg.nii.gz.")
    # Creating a file is the only reliable test: os.access() says yes to root on
    # read-only mounts and pseudo file systems, and ignores ACLs.
    try:
        temporary_sibling(path).unlink()
    except OSError as exc:
        raise OutputError(f"Output folder {parent} is not writable ({exc.strerror}).",
                          "Choose a folder you can write to.") from None
    return path


def write_image_atomic(image: sitk.Image, path: PathLike, verify: Optional[Verify] = None) -> Path:
    """Write ``image`` (compressed) via a temporary file in the same folder and an atomic rename.

    On any failure, including KeyboardInterrupt, the temporary file is removed and an
    existing file at ``path`` is left as it was.

    The written file is always read back and compared with ``image`` (geometry and
    every voxel) before the rename: a full disk or an exceeded quota can leave a short
    file without any error from ITK's writers.

    Args:
        image: the image to write.
        path: destination; its extension selects the format (see ``WRITABLE_SUFFIXES``).
        verify: a further check run on the written temporary file before the rename
            (see :mod:`KDSegmentationLib.atomic_files`).

    Returns:
        ``path``.

    Raises:
        OutputError: the path cannot be written (see :func:`check_output_path`), the
            disk is full or permission is denied.
        WriteVerificationError: the file read back differs from ``image`` (disk full,
            quota, I/O error), or ``verify`` rejected it.
    """
    path = check_output_path(path)
    read_back = image_check(image)

    def verify_written(tmp: Path) -> None:
        read_back(tmp)
        if verify is not None:
            verify(tmp)

    try:
        # The temporary keeps the extension, which selects the ITK writer. It is created
        # before ITK writes, so that a folder that cannot be written fails with the OS's
        # reason (ITK's writers report it only on stderr).
        with atomic_file(path, keep_suffix=True, verify=verify_written) as tmp:
            with native_messages_captured(f"writing {path}", descriptor=True):  # the NIfTI library's "NWAD: ..."
                sitk.WriteImage(image, str(tmp), useCompression=True)
    except (RuntimeError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
        # Name the user's file, not the hidden temporary ITK was writing.
        reason = re.sub(r"\S*\.[0-9a-f]{12}" + re.escape(TEMPORARY_MARK) + r"\S*", str(path), reason)
        raise OutputError(f"Cannot write {path}: {reason}.",
                          f"Check free disk space ({_free_space(path.parent)}) and permissions.") from None
    except WriteVerificationError as exc:
        raise WriteVerificationError(exc.message, f"Free disk space ({_free_space(path.parent)}) or check the "
                                     "disk and permissions, then run again.") from None
    return path


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 1e6:.1f} MB free in {folder}" if free >= 1e5 else f"{free} bytes free in {folder}"
