"""Write a file so that readers see either the old content or the complete new one, never a part.

The temporary sibling is created with ``open(..., "x")``, so the final file gets the
user's umask; ``tempfile.mkstemp`` would make it 0600 and hide a shared release folder's
registry or weights from colleagues.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Union

__all__ = ["temporary_sibling", "write_text_atomic"]


def temporary_sibling(path: Union[str, Path], suffix: str = ".part") -> Path:
    """Create and return an empty hidden file next to ``path`` (same folder, so ``os.replace`` is atomic).

    Raises:
        OSError: the folder cannot be written.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
    open(tmp, "xb").close()
    return tmp


def write_text_atomic(path: Union[str, Path], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` via a temporary sibling and an atomic rename.

    On any failure, including KeyboardInterrupt, the temporary file is removed and an
    existing ``path`` is left as it was.

    Raises:
        OSError: the folder cannot be written or the disk is full.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
