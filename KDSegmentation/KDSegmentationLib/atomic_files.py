"""Write a file or a folder so that readers see the old content or the complete new one, never a part.

Every writer of the Lib and of the training code goes through :func:`atomic_file` (or
:func:`atomic_directory` for a folder): the content is written under a hidden temporary
sibling, optionally synced to disk and checked, then renamed over the target in one step.

- Permissions: the temporary file is created with ``open(..., "x")`` and the folder with
  ``mkdir``, so both get the user's umask. ``tempfile.mkstemp``/``mkdtemp`` would make them
  0600/0700 and hide a shared run or release folder from colleagues. Writers that recreate
  the file themselves with 0600 (safetensors does) are put back to that mode before the rename.
- Names: each temporary sibling carries a random token, so two writers of the same target
  (two converters, two processes) never write into each other's temporary file; the last
  rename wins with a complete file.
- ``verify``: a callable run on the finished temporary path before the rename (for example
  reading a written image back). If it raises, the temporary is removed, the target is left
  as it was and :class:`~KDSegmentationLib.errors.WriteVerificationError` (an
  ``OutputError``, exit code 7) is raised.
- ``fsync``: flush the content (and the folder entry after the rename) to disk, for files
  whose loss after a power cut costs more than the sync (checkpoints).

On any failure, KeyboardInterrupt included, the temporary is removed and an existing target
is untouched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from .errors import WriteVerificationError
from .written_file_checks import bytes_check

__all__ = ["Verify", "TEMPORARY_MARK", "temporary_sibling", "atomic_file", "atomic_directory", "write_text_atomic",
           "fsync_path"]

PathLike = Union[str, Path]

Verify = Callable[[Path], None]
"""Check a written temporary file or folder (its path is the argument); raise to reject it."""

TEMPORARY_MARK = ".tmp"
"""Marks temporary siblings: ``.<name>.<token>.tmp`` (or ``.<stem>.<token>.tmp.<ext>``)."""


def temporary_sibling(path: PathLike, keep_suffix: bool = False, directory: bool = False) -> Path:
    """Create and return an empty hidden file (or folder) next to ``path``, with a unique name.

    Being in the same folder makes the final ``os.replace`` a rename on one file system.

    Args:
        path: the target the temporary will replace.
        keep_suffix: end the name with the target's extensions (``.nii.gz``, ``.npz``), for
            writers that choose the format by extension or append one.
        directory: create a folder instead of a file.

    Returns:
        ``<folder>/.<name>.<token>.tmp``, or ``<folder>/.<stem>.<token>.tmp.<extensions>``
        with ``keep_suffix``.

    Raises:
        OSError: the folder does not exist or cannot be written.
    """
    path = Path(path)
    stem, dot, extensions = path.name.partition(".")
    token = secrets.token_hex(6)
    if keep_suffix and dot:
        name = f".{stem}.{token}{TEMPORARY_MARK}.{extensions}"
    else:
        name = f".{path.name}.{token}{TEMPORARY_MARK}"
    tmp = path.parent / name
    if directory:
        tmp.mkdir()
    else:
        open(tmp, "xb").close()
    return tmp


def fsync_path(path: PathLike) -> None:
    """Flush a file's content, or a folder's entries, to disk.

    Folders cannot be opened for syncing on Windows; there the rename is already durable
    enough for our purposes and the call does nothing.
    """
    path = Path(path)
    if path.is_dir():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
        return
    with open(path, "r+b") as handle:
        os.fsync(handle.fileno())


def _umask_mode(path: Path) -> int:
    """Permission bits a new file gets here: those of ``path``, created by us, without x bits."""
    return stat.S_IMODE(path.stat().st_mode) & 0o666


def _restore_mode(path: Path, file_mode: int) -> None:
    """Give a written file ``file_mode`` (keeping any x bits) if its writer recreated it differently."""
    current = stat.S_IMODE(path.stat().st_mode)
    wanted = file_mode | (current & 0o111)
    if current != wanted:
        os.chmod(path, wanted)


def _verify(verify: Optional[Verify], tmp: Path, target: Path) -> None:
    if verify is None:
        return
    try:
        verify(tmp)
    except WriteVerificationError:
        raise
    except Exception as exc:
        raise WriteVerificationError(
            f"{target} was not written: the new content failed its check after writing ({exc}); "
            "the previous file, if any, is unchanged.",
            "Check the free space and health of the disk, then run again.") from exc


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


@contextmanager
def atomic_file(path: PathLike, keep_suffix: bool = False, fsync: bool = False,
                verify: Optional[Verify] = None) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends normally, move it onto ``path``.

    Example::

        with atomic_file(out / "model.onnx", keep_suffix=True) as tmp:
            torch.onnx.export(model, x, tmp)

    Args:
        path: the file to create or replace; its folder must exist.
        keep_suffix: see :func:`temporary_sibling`.
        fsync: sync the content before the rename and the folder after it.
        verify: check run on the written temporary before the rename.

    Raises:
        WriteVerificationError: ``verify`` rejected the content.
        OSError: the folder cannot be written or the disk is full.
    """
    path = Path(path)
    tmp = temporary_sibling(path, keep_suffix=keep_suffix)
    file_mode = _umask_mode(tmp)
    try:
        yield tmp
        _restore_mode(tmp, file_mode)
        _verify(verify, tmp, path)
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, path)
        if fsync:
            fsync_path(path.parent)
    finally:
        _remove(tmp)


@contextmanager
def atomic_directory(path: PathLike, fsync: bool = False, verify: Optional[Verify] = None) -> Iterator[Path]:
    """Yield a temporary folder to fill; when the block ends normally, it becomes ``path``.

    An existing folder at ``path`` is first renamed aside and deleted only after the new
    one is in place, so ``path`` is never missing or half-written; readers that opened
    files in the old folder keep reading them.

    Args:
        path: the folder to create or replace; its parent must exist.
        fsync: sync every file in the folder and the folder itself before the rename,
            and the parent after it.
        verify: check run on the filled temporary folder before the rename.

    Raises:
        WriteVerificationError: ``verify`` rejected the content.
        OSError: the parent cannot be written or the disk is full.
    """
    path = Path(path)
    tmp = temporary_sibling(path, directory=True)
    file_mode = _umask_mode(tmp)
    old: Optional[Path] = None
    try:
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file() and not item.is_symlink():
                _restore_mode(item, file_mode)
        _verify(verify, tmp, path)
        if fsync:
            for item in sorted(tmp.rglob("*")):
                fsync_path(item)
            fsync_path(tmp)
        if path.exists():
            old = tmp.with_name(tmp.name + ".old")
            os.rename(path, old)
        os.rename(tmp, path)
        if fsync:
            fsync_path(path.parent)
    except BaseException:
        if old is not None and not path.exists():
            os.rename(old, path)  # the new folder did not arrive: put the old one back
            old = None
        raise
    finally:
        _remove(tmp)
        if old is not None:
            _remove(old)


def write_text_atomic(path: PathLike, text: str, fsync: bool = False, verify: Optional[Verify] = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_file`.

    The written bytes are read back and compared with the encoded text before the
    rename (a full disk can cut a file short without an error), then ``verify`` runs.

    Returns:
        ``path``.

    Raises:
        WriteVerificationError: ``verify`` rejected the content.
        OSError: the folder cannot be written or the disk is full.
    """
    path = Path(path)
    data = text.encode("utf-8")
    same_bytes = bytes_check(data)

    def verify_written(tmp: Path) -> None:
        same_bytes(tmp)
        if verify is not None:
            verify(tmp)

    with atomic_file(path, fsync=fsync, verify=verify_written) as tmp:
        tmp.write_bytes(data)
    return path
