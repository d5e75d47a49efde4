"""Checks that a freshly written temporary file holds what was meant, run before it replaces its target.

Writers do not always raise on a full disk or an exceeded quota (ITK's NIfTI writer only
prints to the console and returns), so a 0-byte or truncated file used to be renamed
into place. These checks are the ``verify`` step of
:func:`KDSegmentationLib.atomic_files.atomic_file`: a mismatch raises
:class:`WrittenFileMismatch`, the helper removes the temporary, keeps the target and
raises ``WriteVerificationError`` (exit code 7). Images are read back by
:mod:`KDSegmentationLib.imaging.written_image_check`.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Callable, Union

__all__ = ["WrittenFileMismatch", "bytes_check", "check_safetensors_complete", "check_zip_complete"]

PathLike = Union[str, Path]


class WrittenFileMismatch(Exception):
    """The file on disk is not what was meant to be written (disk full, quota, I/O error)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the written file {what}")


def bytes_check(expected: bytes) -> Callable[[PathLike], None]:
    """A verifier: the file holds exactly ``expected`` (size first, then content; for small files).

    Returns:
        ``verify(path)``, raising :class:`WrittenFileMismatch` on any difference.
    """

    def verify(path: PathLike) -> None:
        actual = os.stat(path).st_size
        if actual != len(expected):
            raise WrittenFileMismatch(f"has {actual} of {len(expected)} bytes")
        with open(path, "rb") as handle:
            if handle.read() != expected:
                raise WrittenFileMismatch("reads back different bytes")

    return verify


def check_safetensors_complete(path: PathLike) -> None:
    """Raise unless ``path`` is a whole safetensors file: its size is exactly the 8-byte header
    length, the JSON header and the tensor data the header describes (read: the header only)."""
    size = os.stat(path).st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise WrittenFileMismatch(f"has {size} bytes, too few for a safetensors header")
        header_bytes = struct.unpack("<Q", prefix)[0]
        if 8 + header_bytes > size:
            raise WrittenFileMismatch(f"is cut short inside its safetensors header ({size} bytes)")
        try:
            header = json.loads(handle.read(header_bytes))
        except ValueError:
            raise WrittenFileMismatch("has an unreadable safetensors header") from None
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if size != 8 + header_bytes + end:
        raise WrittenFileMismatch(f"has {size} bytes, its safetensors header describes {8 + header_bytes + end}")


def check_zip_complete(path: PathLike) -> None:
    """Raise unless ``path`` is a zip archive whose central directory (written last) is intact,
    as ``torch.save`` files are: a file cut short on a full disk fails this cheap check."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError):
        raise WrittenFileMismatch("is not a complete zip archive") from None
    if not entries:
        raise WrittenFileMismatch("is an empty archive")

