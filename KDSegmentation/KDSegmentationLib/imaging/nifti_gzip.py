"""Reading a .nii.gz with one verified decompression, straight into the image's memory.

ITK fills a truncated or corrupt gzip stream with zeros or garbage without an error
(tested), so the stream's CRC must be checked. Checking it with Python and then
letting ITK decompress the file again cost two full decodes. Here the file is
decompressed once, in pieces of a few hundred kB (CRC and length checked, with ISA-L's
inflate when ``isal`` is installed, else the standard library's zlib), and each piece is
copied into the voxel buffer of the SimpleITK image that is returned: no whole-file
byte string and no second full-size copy (``GetImageFromArray``), which cost about a
third of the read and 80 MB per 512 x 512 x 150 CT (``benchmarks/read_volume.py``).
Everything about geometry and voxel type comes from ITK's own header reader
(``ReadImageInformation``), so origin, spacing, direction and pixel type are ITK's to the bit.

Only the plain case is taken: a single-file NIfTI-1 (``n+1``), little-endian, 3D
(further axes of extent 1 allowed), one component, on a little-endian machine, with either unscaled values (``scl_slope``
0 or 1 and ``scl_inter`` 0) of a voxel type ITK reads as is, or integer voxels scaled
by a whole slope and intercept, which ITK turns into float32 values that are computed
exactly here while the pieces are decompressed (:mod:`.nifti_scaling`; dcm2niix writes
CT this way). Anything else returns None and the caller uses ITK's full reader.
"""

from __future__ import annotations

import ctypes
import gzip
import math
import struct
import sys
import zlib
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from .nifti_scaling import ExactScaling, ScaledVoxelSink, exact_scaling

__all__ = ["PieceSink", "PlainNiftiGz", "inflate_gzip", "plain_nifti_gz", "read_nifti_gz"]

PieceSink = Callable[[np.ndarray, int], None]

# NIfTI-1 datatype code -> numpy dtype (little-endian).
_NIFTI_DTYPES = {2: "<u1", 4: "<i2", 8: "<i4", 16: "<f4", 64: "<f8", 256: "<i1", 512: "<u2", 768: "<u4",
                 1024: "<i8", 1280: "<u8"}
_NIFTI1_HEADER_BYTES = 348
# Compressed bytes read per step, and the most decompressed bytes produced per step: pieces
# this small stay in the CPU cache on their way into the image (measured fastest in
# benchmarks/read_volume.py), and a long run of zeros cannot inflate into one huge string.
_INPUT_PIECE_BYTES = 1 << 18
_OUTPUT_PIECE_BYTES = 1 << 20


def _inflate_module():
    """ISA-L's zlib-compatible inflate (about twice zlib's speed, same checks) if installed, else zlib."""
    try:
        from isal import isal_zlib
    except ImportError:  # e.g. inside Slicer
        return zlib
    return isal_zlib


def _corrupt(path: Path, reason: object) -> InputImageError:
    return InputImageError(f"Cannot read {path}: the compressed file is truncated or corrupt ({reason}).",
                           "Copy or download the file again.")


def inflate_gzip(path: Path, skip: int, length: int, take: PieceSink) -> int:
    """Decompress a gzip file piece by piece, verifying every member's CRC-32 and length.

    Args:
        path: a gzip file (one or more members; zero padding after a member is allowed).
        skip: how many decompressed bytes to pass over first (a header).
        length: how many bytes after those to hand to ``take``.
        take: called in stream order as ``take(piece, start)`` with the decompressed bytes
            ``skip + start .. skip + start + piece.size`` (uint8 array, valid during the
            call only); together the pieces cover ``skip .. skip + length``, or less when
            the content is shorter (the caller compares the returned length).

    Returns:
        The total decompressed length in bytes.

    Raises:
        InputImageError: the file is truncated, corrupt or not gzip.
    """
    inflate = _inflate_module()
    end = skip + length
    total = 0
    members = 0
    decoder = None  # None between members
    pending = b""
    try:
        with open(path, "rb") as handle:
            while True:
                if not pending:
                    pending = handle.read(_INPUT_PIECE_BYTES)
                    if not pending:
                        break
                if decoder is None:
                    pending = pending.lstrip(b"\0")
                    if not pending:
                        continue
                    decoder, members = inflate.decompressobj(31), members + 1
                piece = decoder.decompress(pending, _OUTPUT_PIECE_BYTES)
                if decoder.eof:
                    pending, decoder = decoder.unused_data, None
                else:
                    pending = decoder.unconsumed_tail
                total = _hand_over(piece, total, skip, end, take)
            if decoder is not None:  # the file ended inside a member: output zlib still holds, then the verdict
                total = _hand_over(decoder.flush(), total, skip, end, take)
                if not decoder.eof:
                    raise _corrupt(path, "the compressed stream ends early")
    except (OSError, EOFError, zlib.error, inflate.error) as exc:
        raise _corrupt(path, exc) from None
    if not members:
        raise _corrupt(path, "no compressed data")
    return total


def _hand_over(piece: bytes, total: int, skip: int, end: int, take: PieceSink) -> int:
    """Give ``take`` the part of ``piece`` (stream bytes ``total ..``) that falls in ``skip .. end``."""
    low, high = max(total, skip), min(total + len(piece), end)
    if high > low:
        take(np.frombuffer(piece, np.uint8, high - low, low - total), low - skip)
    return total + len(piece)


def _writable_voxel_bytes(image: sitk.Image) -> np.ndarray:
    """The voxel buffer of a freshly created ``image`` as a writable uint8 array.

    SimpleITK offers only a read-only view (``GetArrayViewFromImage``, which first makes
    the buffer the image's own, unshared). The image here is new and referenced by the
    caller alone, so filling its buffer in place is safe; the caller keeps ``image``
    alive while the array is used.
    """
    view = sitk.GetArrayViewFromImage(image)
    address = view.__array_interface__["data"][0]
    return np.ctypeslib.as_array((ctypes.c_ubyte * view.nbytes).from_address(address))


@dataclass(frozen=True)
class _Layout:
    """Where and how the voxels of a plain NIfTI-1 file are stored."""

    stored: np.dtype  # voxel type in the file
    offset: int  # byte offset of the voxels in the decompressed stream
    scaling: Optional[ExactScaling]  # None: the stored values are the image's


def _plain_nifti1_layout(header: bytes, size: Sequence[int]) -> Optional[_Layout]:
    """The voxel layout of a plain NIfTI-1 header of ``size`` (x, y, z); None if not plain."""
    if len(header) < _NIFTI1_HEADER_BYTES or struct.unpack_from("<i", header, 0)[0] != _NIFTI1_HEADER_BYTES:
        return None  # NIfTI-2, big-endian or not NIfTI
    if header[344:348] != b"n+1\x00":
        return None
    dim = struct.unpack_from("<8h", header, 40)
    datatype = struct.unpack_from("<h", header, 70)[0]
    vox_offset, slope, intercept = struct.unpack_from("<3f", header, 108)
    dtype = _NIFTI_DTYPES.get(datatype)
    if dtype is None or not 3 <= dim[0] <= 7 or tuple(dim[1:4]) != tuple(size):
        return None
    if any(extent != 1 for extent in dim[4:dim[0] + 1]):
        return None  # a 4th or 5th axis that ITK reads as time points or vector components
    # (some writers store a 3D volume as 4D with one time point: ITK reads it as 3D, and its bytes are the same)
    if not math.isfinite(vox_offset) or vox_offset != int(vox_offset) or int(vox_offset) < _NIFTI1_HEADER_BYTES:
        return None
    stored = np.dtype(dtype)
    if slope in (0.0, 1.0) and intercept == 0.0:
        return _Layout(stored, int(vox_offset), None)
    scaling = exact_scaling(stored, slope, intercept)
    if scaling is None:
        return None  # ITK rescales in double precision: leave it to ITK
    return _Layout(stored, int(vox_offset), scaling)


def _header_bytes(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read(_NIFTI1_HEADER_BYTES)
    except (OSError, EOFError, zlib.error):
        return b""  # the full decode reports the problem


@dataclass(frozen=True)
class PlainNiftiGz:
    """A plain .nii.gz as ITK's header reader sees it, and where its voxels lie in the stream.

    Args:
        path: the file.
        header: an ``ImageFileReader`` after ``ReadImageInformation()``: size, pixel type
            and geometry exactly as ITK reads them.
        offset: where the voxels start in the decompressed stream (bytes).
        voxel_bytes: how many bytes of stored voxels follow.
        scaling: how ITK turns the stored voxels into its float32 values, or None when
            the stored voxels are the image's (same type, same bytes).
    """

    path: Path
    header: sitk.ImageFileReader
    offset: int
    voxel_bytes: int
    scaling: Optional[ExactScaling] = None

    def inflate_voxels(self, take: PieceSink) -> None:
        """Decompress the file once, CRC-checked, handing the stored voxel bytes to ``take`` (see :func:`inflate_gzip`).

        Raises:
            InputImageError: the stream is truncated or corrupt, or shorter than the header says.
        """
        decoded = inflate_gzip(self.path, self.offset, self.voxel_bytes, take)
        if self.offset + self.voxel_bytes > decoded:
            raise InputImageError(f"Cannot read {self.path}: it holds {decoded} bytes, but its header describes "
                                  f"{self.voxel_bytes} bytes of voxels from byte {self.offset}.",
                                  "Copy or export the file again.")


def plain_nifti_gz(path: Path) -> Optional[PlainNiftiGz]:
    """The header of a plain .nii.gz (see the module docstring), or None for any other file.

    Only the header is decompressed; ITK reads the geometry.
    """
    if sys.byteorder != "little":
        return None  # the voxels are used as stored (little-endian)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        return None
    size = reader.GetSize()
    layout = _plain_nifti1_layout(_header_bytes(path), size)
    if layout is None:
        return None
    image_dtype = np.dtype(np.float32) if layout.scaling is not None else layout.stored
    if sitk.GetImageFromArray(np.zeros((1, 1, 1), image_dtype)).GetPixelID() != reader.GetPixelID():
        return None
    return PlainNiftiGz(Path(path), reader, layout.offset, int(np.prod(size)) * layout.stored.itemsize,
                        layout.scaling)


def read_nifti_gz(path: Path) -> Optional[sitk.Image]:
    """``sitk.ReadImage(path)`` for a plain .nii.gz, after one CRC-checked decompression.

    Args:
        path: a ``.nii.gz`` file.

    Returns:
        The image (voxels, pixel type, origin, spacing and direction equal to ITK's
        reader), or None when the file is not the plain case (see the module docstring)
        or ITK cannot read its header; the caller then reads it the general way. Which
        case applies is decided from the header before the voxels are decompressed.

    Raises:
        InputImageError: the gzip stream is truncated or corrupt.
    """
    plain = plain_nifti_gz(path)
    if plain is None:
        return None
    header = plain.header
    image = sitk.Image([int(n) for n in header.GetSize()], header.GetPixelID())
    voxels = _writable_voxel_bytes(image)
    if plain.scaling is not None:
        plain.inflate_voxels(ScaledVoxelSink(voxels.view(np.float32), plain.scaling).take)
    else:
        def copy(piece: np.ndarray, start: int) -> None:
            voxels[start:start + piece.size] = piece

        plain.inflate_voxels(copy)
    image.SetOrigin(header.GetOrigin())
    image.SetSpacing(header.GetSpacing())
    image.SetDirection(header.GetDirection())
    return image
