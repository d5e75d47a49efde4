"""SHA-256 of a file, shared by weights resolution and download.

Its own module so that checking a bundled or cached model on every ``kdseg`` start does
not load the download machinery (ssl, http, requests).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_of"]

_HASH_BLOCK = 1 << 20


def sha256_of(path: Path) -> str:
    """Lowercase hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
