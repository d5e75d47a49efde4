"""Find a model's ONNX file: bundled next to the registry, then the user cache, then download.

Every copy is checked against the registry's size and SHA-256 before use; a file's
digest is computed once per process (per path, size and modification time).
"""

from __future__ import annotations

import os
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import ChecksumError, WeightsError
from ..progress import CancelToken, ProgressCallback
from ..progress_throttle import throttle_progress
from .file_digest import sha256_of
from .model_registry import ModelCard

__all__ = ["cache_dir", "cached_path", "bundled_path", "resolve_weights", "is_available_offline",
           "absolute_urls"]

_verified: Dict[Tuple[str, int, int], bool] = {}
_verified_lock = threading.Lock()


# The download machinery (ssl, http, requests) loads only when a file is fetched, not on
# every ``kdseg`` start.
def download_file(url: str, target: Path, **kwargs) -> Path:
    """:func:`KDSegmentationLib.weights.download.download_file`, imported on first use."""
    from .download import download_file as fetch

    return fetch(url, target, **kwargs)


def cache_dir() -> Path:
    """Per-user weight cache: ``$KDSEG_CACHE``, else the platform's cache folder.

    Linux ``$XDG_CACHE_HOME/kdsegmentation`` (default ``~/.cache/kdsegmentation``), macOS
    ``~/Library/Caches/kdsegmentation``, Windows ``%LOCALAPPDATA%\\kdsegmentation\\Cache``.
    """
    env = os.environ.get("KDSEG_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else Path.home() / "AppData" / "Local") / "kdsegmentation" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "kdsegmentation"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / "kdsegmentation"


def cached_path(card: ModelCard, cache: Optional[Path] = None) -> Path:
    """Where ``card``'s file lives in the cache: ``<cache>/<id>/<sha256[:16]>/<file>``.

    The digest in the path keeps a new release of a model from colliding with the old one.
    """
    return Path(cache if cache is not None else cache_dir()) / card.id / card.sha256[:16] / card.file


def bundled_path(card: ModelCard, registry_dir: Path) -> Path:
    """Where a file shipped with the registry would be."""
    return Path(registry_dir) / card.file


def _matches(path: Path, card: ModelCard) -> bool:
    """Size and SHA-256 check; the digest is computed once per (path, size, mtime) and process."""
    try:
        stat = path.stat()
    except OSError:
        return False
    if not path.is_file() or stat.st_size != card.size_bytes:
        return False
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _verified_lock:
        known = _verified.get(key)
    if known is None:
        try:
            known = sha256_of(path) == card.sha256
        except OSError:
            return False
        with _verified_lock:
            _verified[key] = known
    return known


def _remember_verified(path: Path) -> None:
    """Record ``path`` (just verified on this thread) so :func:`_matches` need not hash it again,
    e.g. on the GUI thread when the module refreshes its model list after a download."""
    stat = path.stat()
    with _verified_lock:
        _verified[(str(path.resolve()), stat.st_mtime_ns, stat.st_size)] = True


def is_available_offline(card: ModelCard, registry_dir: Path, cache: Optional[Path] = None) -> bool:
    """True when a verified copy is bundled or cached (no network needed)."""
    return _matches(bundled_path(card, registry_dir), card) or _matches(cached_path(card, cache), card)


def absolute_urls(card: ModelCard, registry_dir: Path) -> List[str]:
    """The card's URLs with relative paths turned into file:// URLs under ``registry_dir``."""
    urls = []
    for url in card.urls:
        if urllib.parse.urlsplit(url).scheme:
            urls.append(url)
        else:
            urls.append((Path(registry_dir) / url).resolve().as_uri())
    return urls


def _manual_fix(card: ModelCard, urls: List[str], target: Path, bundled: Path) -> str:
    return (f"To install it by hand, download {' or '.join(urls)} and save it as {target} "
            f"(or next to the registry as {bundled}); the file must be {card.file}, {card.size_bytes} bytes, "
            f"SHA-256 {card.sha256}.")


def resolve_weights(card: ModelCard, registry_dir: Path, *, cache: Optional[Path] = None,
                    allow_download: bool = True, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None, read_timeout: Optional[float] = None) -> Path:
    """Path of a verified copy of ``card``'s ONNX file, downloading it if needed.

    Order: the file bundled next to the registry; the user cache (:func:`cached_path`);
    each of the card's URLs in turn (relative ones resolve against ``registry_dir``),
    downloaded into the cache.

    Args:
        card: the model's registry entry.
        registry_dir: the registry's folder (:attr:`ModelRegistry.directory`).
        cache: cache folder (default :func:`cache_dir`).
        allow_download: False to fail instead of downloading.
        progress, cancel: forwarded to :func:`download_file`.
        read_timeout: seconds to wait for each read of a download (None: the download's default).

    Raises:
        WeightsError: not available offline and ``allow_download`` is False, or every
            URL failed; the message names the URLs, and the hint the cache path and the
            exact file to place there by hand.
        ChecksumError: every URL served a file that fails verification.
        CancelledError: ``cancel`` was set.
    """
    bundled = bundled_path(card, registry_dir)
    if _matches(bundled, card):
        return bundled
    target = cached_path(card, cache)
    if _matches(target, card):
        return target
    urls = absolute_urls(card, registry_dir)
    manual = _manual_fix(card, urls, target, bundled)
    notes = []
    if bundled.exists():
        notes.append(f"the bundled {bundled} does not match the registry's size or SHA-256")
    if target.exists():
        notes.append(f"the cached {target} does not match the registry's size or SHA-256 and was deleted")
        try:
            target.unlink()  # never leave a corrupt file where the cache would look
        except OSError:
            pass
    note = f" ({'; '.join(notes)})" if notes else ""
    if not allow_download:
        raise WeightsError(f"Weights of model {card.id} are not available offline{note}.", manual)
    failures = []
    progress = throttle_progress(progress)  # a download reports every chunk; views redraw each event
    for url in urls:
        try:
            timeouts = {} if read_timeout is None else {"read_timeout": read_timeout}
            path = download_file(url, target, sha256=card.sha256, size_bytes=card.size_bytes,
                                 progress=progress, cancel=cancel, **timeouts)
            _remember_verified(path)  # download_file checked the SHA-256; don't hash it again elsewhere
            return path
        except WeightsError as exc:  # DownloadError or ChecksumError: try the next location
            failures.append(exc)
    error = ChecksumError if all(isinstance(f, ChecksumError) for f in failures) else WeightsError
    detail = " ".join(f.message for f in failures)
    raise error(f"Could not obtain the weights of model {card.id}{note}: {detail}", manual)
