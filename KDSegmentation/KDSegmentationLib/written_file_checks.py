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

import os
from pathlib import Path
from typing import Callable, Union

__all__ = ["WrittenFileMismatch", "bytes_check"]

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
