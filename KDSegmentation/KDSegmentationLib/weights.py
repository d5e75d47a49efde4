"""Find a model's ONNX file: bundled next to the registry, then the user cache, then download."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

from .download import download_file, sha256_of
from .errors import DownloadError, WeightsError
from .progress import CancelToken, ProgressCallback
from .registry import ModelCard

__all__ = ["cache_dir", "resolve_weights", "is_available_offline", "cached_path"]

_verified: Dict[Tuple[str, float, int], bool] = {}
_verified_lock = threading.Lock()


def cache_dir() -> Path:
    """Per-user weight cache: ``$KDSEG_CACHE``, else the platform's cache folder."""
    env = os.environ.get("KDSEG_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "kdsegmentation" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "kdsegmentation"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kdsegmentation"


def cached_path(card: ModelCard, cache: Optional[Path] = None) -> Path:
    """Where ``card``'s file lives in the cache (versioned by digest so updates never collide)."""
    return (cache or cache_dir()) / card.id / card.sha256[:16] / card.file


def _matches(path: Path, card: ModelCard) -> bool:
    """Size and SHA-256 check, hashed once per process per (path, mtime, size)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if stat.st_size != card.size_bytes:
        return False
    key = (str(path.resolve()), stat.st_mtime, stat.st_size)
    with _verified_lock:
        if key in _verified:
            return _verified[key]
    ok = sha256_of(path) == card.sha256
    with _verified_lock:
        _verified[key] = ok
    return ok


def _bundled_path(card: ModelCard, registry_dir: Path) -> Path:
    return Path(registry_dir) / card.file


def is_available_offline(card: ModelCard, registry_dir: Path, cache: Optional[Path] = None) -> bool:
    """True when a verified copy is bundled or cached (no network needed)."""
    return _matches(_bundled_path(card, registry_dir), card) or _matches(cached_path(card, cache), card)


def _absolute_url(url: str, registry_dir: Path) -> str:
    if "://" in url:
        return url
    return (Path(registry_dir) / url).resolve().as_uri()


def resolve_weights(card: ModelCard, registry_dir: Path, *, cache: Optional[Path] = None,
                    allow_download: bool = True, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None) -> Path:
    """Path of a verified copy of ``card``'s ONNX file, downloading it if needed.

    Raises:
        WeightsError: not available offline and ``allow_download`` is False, or every
            URL failed; the message names the URLs, the cache path and where to put the
            file by hand.
    """
    bundled = _bundled_path(card, registry_dir)
    if _matches(bundled, card):
        return bundled
    target = cached_path(card, cache)
    if _matches(target, card):
        return target
    if target.exists():
        target.unlink()  # wrong size or digest: never use or keep a corrupt cache entry
    urls = [_absolute_url(url, registry_dir) for url in card.urls]
    manual = (f"Download {card.file} from {' or '.join(urls)} and place it at {target} "
              f"(SHA-256 {card.sha256}).")
    if bundled.exists():
        manual = f"The bundled file {bundled} does not match the registry (size or SHA-256). " + manual
    if not allow_download:
        raise WeightsError(f"Weights of model {card.id} are not available offline.", manual)
    errors = []
    for url in urls:
        try:
            return download_file(url, target, sha256=card.sha256, size_bytes=card.size_bytes,
                                 progress=progress, cancel=cancel)
        except DownloadError as exc:
            errors.append(exc.message)
    raise WeightsError(f"Could not obtain weights of model {card.id}: {' '.join(errors)}", manual)
