"""Verified, resumable, atomic download of model weights (standard library only).

A download streams into ``<dest>.partial`` under an exclusive lock file, resumes
with an HTTP Range request when the server allows it, retries timeouts and 5xx
answers with exponential backoff, and checks size and SHA-256 before renaming the
file into place. A bad file is deleted, never left where the cache would use it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from .errors import ChecksumError, DownloadError
from .progress import CancelToken, ProgressCallback, Stage, report

__all__ = ["download_file", "sha256_of", "FileLock"]

_log = logging.getLogger("KDSegmentationLib")
_CHUNK = 1 << 20
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class FileLock:
    """Inter-process lock: a lock file created with O_EXCL (works on every OS).

    A lock older than ``stale_after`` seconds whose owner stopped updating it is
    taken over, so a killed download does not block later ones forever.
    """

    def __init__(self, path: Path, timeout: float = 600.0, stale_after: float = 120.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.stale_after = stale_after
        self._fd: Optional[int] = None

    def __enter__(self) -> "FileLock":
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(self._fd, str(os.getpid()).encode())
                return self
            except FileExistsError:
                try:
                    age = time.time() - self.path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > self.stale_after:
                    _log.warning("Removing stale download lock %s (%.0f s old)", self.path, age)
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                if time.monotonic() > deadline:
                    raise DownloadError(f"Timed out waiting for another download holding {self.path}.",
                                        "Wait for it to finish, or delete the lock file if no download is running.")
                time.sleep(0.2)

    def touch(self) -> None:
        os.utime(self.path, None)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _check_scheme(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or parts.scheme == "file":
        return parts.scheme
    if parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS:
        return "http"
    raise DownloadError(f"Refusing to download {url}: only https:// URLs (http:// only for localhost) "
                        "and file:// paths are allowed.", "Use an https:// location for the weights.")


def _verify(path: Path, sha256: str, size_bytes: Optional[int], url: str) -> None:
    actual_size = path.stat().st_size
    if size_bytes is not None and actual_size != size_bytes:
        path.unlink()
        raise ChecksumError(f"Downloaded file from {url} has {actual_size} bytes, expected {size_bytes}; "
                            "the partial file was deleted.", "Retry the download; if it persists the "
                            "server file differs from the registry entry.")
    actual = sha256_of(path)
    if actual != sha256:
        path.unlink()
        raise ChecksumError(f"SHA-256 mismatch for {url}: got {actual}, expected {sha256}; "
                            "the downloaded file was deleted.", "Retry the download; if it persists the "
                            "server file differs from the registry entry.")


def _fetch_http(url: str, partial: Path, size_bytes: Optional[int], progress: Optional[ProgressCallback],
                cancel: Optional[CancelToken], lock: FileLock, connect_timeout: float, read_timeout: float) -> None:
    offset = partial.stat().st_size if partial.exists() else 0
    if size_bytes is not None and offset > size_bytes:
        partial.unlink()
        offset = 0
    request = urllib.request.Request(url, headers={"User-Agent": "KDSegmentation"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    # urlopen's timeout covers connect and each blocking read; the read timeout is
    # set on the socket once connected.
    response = urllib.request.urlopen(request, timeout=connect_timeout)
    try:
        sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
        if sock is not None:
            sock.settimeout(read_timeout)
        if offset and response.status != 206:
            offset = 0  # server ignored Range: restart from scratch
        total = size_bytes
        mode = "ab" if offset else "wb"
        done = offset
        last_touch = time.monotonic()
        with open(partial, mode) as handle:
            while True:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                block = response.read(_CHUNK)
                if not block:
                    break
                handle.write(block)
                done += len(block)
                report(progress, Stage.DOWNLOADING, done, total, f"{done / 1e6:.1f} MB")
                if time.monotonic() - last_touch > 5:
                    lock.touch()
                    last_touch = time.monotonic()
    finally:
        response.close()
    if size_bytes is not None and done < size_bytes:
        raise TimeoutError(f"connection closed after {done} of {size_bytes} bytes")


def download_file(url: str, destination: Path, *, sha256: str, size_bytes: Optional[int] = None,
                  progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                  connect_timeout: float = 10.0, read_timeout: float = 30.0, retries: int = 4,
                  backoff: float = 1.0) -> Path:
    """Download ``url`` to ``destination``, verified by size and SHA-256.

    Args:
        url: https:// (http:// only for localhost) or file:// location.
        destination: final path; written only once verified (atomic rename).
        sha256: expected lowercase hex digest.
        size_bytes: expected size, or None.
        progress: receives Stage.DOWNLOADING events in bytes.
        cancel: checked between chunks.
        connect_timeout / read_timeout: seconds.
        retries: further attempts after timeouts, connection errors, truncation and 5xx.
        backoff: first retry delay in seconds, doubled each time.

    Raises:
        DownloadError: HTTP 4xx, disallowed scheme, or retries exhausted.
        ChecksumError: size or digest mismatch (the bad file is deleted).
    """
    destination = Path(destination)
    scheme = _check_scheme(url)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    with FileLock(destination.with_name(destination.name + ".lock")) as lock:
        if destination.exists():
            # Another process finished while we waited for the lock.
            if (size_bytes is None or destination.stat().st_size == size_bytes) and sha256_of(destination) == sha256:
                return destination
            destination.unlink()
        if scheme == "file":
            source = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
            if not source.is_file():
                raise DownloadError(f"Weights file {source} (from {url}) does not exist.",
                                    "Check the path in the registry entry.")
            shutil.copyfile(source, partial)
            report(progress, Stage.DOWNLOADING, partial.stat().st_size, partial.stat().st_size, "copied")
        else:
            attempt = 0
            while True:
                try:
                    _fetch_http(url, partial, size_bytes, progress, cancel, lock, connect_timeout, read_timeout)
                    break
                except urllib.error.HTTPError as exc:
                    if exc.code == 416 and partial.exists():
                        partial.unlink()  # our partial is past the end: restart
                    elif exc.code < 500:
                        if partial.exists():
                            partial.unlink()
                        raise DownloadError(f"Download of {url} failed: HTTP {exc.code} {exc.reason}.",
                                            "Check the URL in the model registry.") from None
                    reason = f"HTTP {exc.code}"
                except (urllib.error.URLError, TimeoutError, OSError) as exc:
                    reason = str(getattr(exc, "reason", exc))
                attempt += 1
                if attempt > retries:
                    raise DownloadError(f"Download of {url} failed after {retries + 1} attempts ({reason}).",
                                        "Check your network connection and try again; the partial file is "
                                        "kept and the next attempt resumes it.")
                delay = backoff * 2 ** (attempt - 1)
                _log.warning("Download of %s failed (%s); retry %d/%d in %.1f s", url, reason, attempt,
                             retries, delay)
                time.sleep(delay)
        _verify(partial, sha256, size_bytes, url)
        os.replace(partial, destination)
    return destination
