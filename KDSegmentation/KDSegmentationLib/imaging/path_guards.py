"""Refuse paths that would destroy an input or hang the command, before any work starts.

- An output that is, or resolves to (symbolic link, hard link, ``..``), an input or
  another output of the same command would overwrite it: refused (exit 7).
- A FIFO, socket or device as an input blocks forever or reads endless bytes; as an
  output it receives a stream instead of a file: refused (exit 3 as input, 7 as output).
- A symbolic link loop as an input is named as such, not as "does not exist".
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

from ..errors import InputImageError, OutputError

__all__ = ["check_input_path", "check_distinct_outputs", "special_file_kind", "special_entries_in_folder"]

PathLike = Union[str, Path]


def special_file_kind(mode: int) -> Optional[str]:
    """"a named pipe (FIFO)", "a device", "a socket", or None for a regular file or folder."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def _is_link_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def check_input_path(path: PathLike) -> os.stat_result:
    """Stat an input file or folder, refusing what no reader should open.

    Returns:
        Its ``os.stat`` (links followed).

    Raises:
        InputImageError: missing path, symbolic link loop, FIFO, socket or device.
    """
    path = Path(path)
    if _is_link_loop(path):
        raise InputImageError(f"Input {path} is a symbolic link loop (it points back to itself).",
                              "Point to the real file or folder.")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputImageError(f"Input {path} does not exist.", "Check the path and its spelling.") from None
    except OSError as exc:
        raise InputImageError(f"Input {path} cannot be opened ({exc.strerror}).",
                              "Check the path and its permissions.") from None
    kind = special_file_kind(info.st_mode)
    if kind:
        raise InputImageError(f"Input {path} is {kind}, not a file or a folder.",
                              "Save the CT to a file (.nii.gz, .nrrd, .mha) or a DICOM folder and pass that.")
    return info


def special_entries_in_folder(folder: Path) -> Tuple[str, ...]:
    """Names of FIFOs, sockets, devices and symbolic link loops directly in ``folder``
    (a DICOM scan would hang on the first or fail on the last)."""
    found = []
    for entry in os.scandir(folder):
        try:
            mode = entry.stat(follow_symlinks=True).st_mode
        except OSError:
            if entry.is_symlink():
                found.append(entry.name)  # loop or dangling link
            continue
        if special_file_kind(mode):
            found.append(entry.name)
    return tuple(sorted(found))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return False


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def check_distinct_outputs(inputs: Sequence[Tuple[str, PathLike]], outputs: Sequence[Tuple[str, PathLike]]) -> None:
    """Refuse an output that is an input, or another output, of the same command.

    Paths are compared after resolving ``~``, ``..`` and symbolic links, and existing
    files also by device and inode (hard links).

    Args:
        inputs: (how messages name it, path) of each input, e.g. ("the input file", ct).
        outputs: (option name, path) of each output, e.g. ("-o", seg), ("--volumes-json", json).

    Raises:
        OutputError: two paths name the same file; an output is a FIFO, socket or device.
    """
    for name, output in outputs:
        output = Path(output)
        try:
            kind = special_file_kind(os.stat(output).st_mode)
        except OSError:
            kind = None
        if kind:
            raise OutputError(f"Output {name} {output} is {kind}, not a file.", "Give a regular file name.")
        for in_name, source in inputs:
            if _resolved(output) == _resolved(Path(source)) or _same_file(output, Path(source)):
                raise OutputError(f"Output {name} {output} is {in_name} {source}; writing it would destroy it.",
                                  "Choose another output path.")
    for i, (name, output) in enumerate(outputs):
        for other_name, other in outputs[i + 1:]:
            if _resolved(Path(output)) == _resolved(Path(other)) or _same_file(Path(output), Path(other)):
                raise OutputError(f"Outputs {name} {output} and {other_name} {other} are the same file; one "
                                  "would overwrite the other.", "Give each output its own path.")
