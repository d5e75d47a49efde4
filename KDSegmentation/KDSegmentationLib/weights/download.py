"""Verified, resumable, atomic download of model weights (standard library only).

A download streams into ``<destination>.partial`` while holding an inter-process
lock on ``<destination>.lock``, resumes with an HTTP Range request when the server
honours it (206) and restarts otherwise, retries timeouts, dropped connections and
5xx answers with exponential backoff, and checks size and SHA-256 before renaming
the file into place. A file that fails verification is deleted, so the destination
only ever holds a complete, verified file, however many processes download at once.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Optional, Tuple

from ..errors import CancelledError, ChecksumError, DownloadError
from ..progress import CancelToken, ProgressCallback, Stage, report

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

__all__ = ["download_file", "sha256_of", "FileLock", "LOCAL_HOSTS"]

_log = logging.getLogger("KDSegmentationLib")
_CHUNK = 1 << 16
_HASH_BLOCK = 1 << 20
_MAX_DELAY = 60.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_RETRY_STATUS = {408, 429}
_OFFLINE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}


def sha256_of(path: Path) -> str:
    """Lowercase hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


# --- inter-process lock ----------------------------------------------------------------

def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class FileLock:
    """Exclusive inter-process lock held through an OS file lock on ``path``.

    ``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows: the operating system
    releases the lock when its holder exits or is killed, so a crashed download never
    blocks later ones. The holder deletes the lock file on release; a waiter that
    then gets the lock on the deleted file notices (different file at ``path``) and
    tries again, so two processes never both hold it.

    Args:
        path: the lock file.
        timeout: seconds to wait for another holder before :class:`DownloadError`.
        cancel: checked while waiting.
    """

    def __init__(self, path: Path, timeout: float = 1800.0, cancel: Optional[CancelToken] = None) -> None:
        if fcntl is None and msvcrt is None:  # pragma: no cover - every platform Slicer runs on has one
            raise RuntimeError("no file locking available on this platform")
        self.path = Path(path)
        self.timeout = timeout
        self.cancel = cancel
        self._fd: Optional[int] = None

    def __enter__(self) -> "FileLock":
        deadline = time.monotonic() + self.timeout
        waiting_logged = False
        while True:
            try:
                fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise _write_error(self.path, exc) from None
            if _try_lock(fd):
                try:
                    current = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    current = False
                if current:
                    self._fd = fd
                    try:
                        os.lseek(fd, 0, os.SEEK_SET)
                        os.write(fd, f"{os.getpid():<10d}".encode())
                    except OSError:
                        pass  # the pid is only informative
                    return self
                _unlock(fd)
            os.close(fd)
            if self.cancel is not None and self.cancel.cancelled:
                raise CancelledError(f"Cancelled while waiting for another download ({self.path}).")
            if time.monotonic() > deadline:
                raise DownloadError(f"Timed out after {self.timeout:.0f} s waiting for another download of "
                                    f"the same file (lock {self.path}, held by process {self._holder()}).",
                                    "Wait for that download to finish and try again.")
            if not waiting_logged:
                _log.info("Waiting for another process downloading to %s", self.path.with_suffix(""))
                waiting_logged = True
            time.sleep(0.1)

    def _holder(self) -> str:
        try:
            return self.path.read_text(encoding="ascii").strip() or "unknown"
        except (OSError, UnicodeDecodeError):
            return "unknown"

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fcntl is not None:
            # Unlink while still holding the lock: a waiter then locks a deleted file and retries.
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            _unlock(fd)
            os.close(fd)
        else:
            _unlock(fd)
            os.close(fd)
            try:  # fails harmlessly while a waiter has the file open (Windows forbids deleting it)
                self.path.unlink()
            except OSError:
                pass


# --- HTTP with separate connect and read timeouts --------------------------------------

def _check_scheme(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return "https"
    if parts.scheme == "file":
        return "file"
    if parts.scheme == "http" and parts.hostname in LOCAL_HOSTS:
        return "http"
    raise DownloadError(f"Refusing to download {url}: only https:// URLs (http:// only for 127.0.0.1, localhost "
                        "or ::1) and file:// paths are allowed.",
                        "Use an https:// location for the weights, or place the file by hand.")


class _ReadTimeout:
    """Connection mixin: connect (and TLS handshake) with ``timeout``, then wait at most
    ``read_timeout`` for each read."""

    def __init__(self, *args, read_timeout: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self._read_timeout)


class _HTTPConnection(_ReadTimeout, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_ReadTimeout, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._read_timeout = read_timeout

    def http_open(self, req):
        return self.do_open(_HTTPConnection, req, read_timeout=self._read_timeout)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._read_timeout = read_timeout

    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, read_timeout=self._read_timeout)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to locations the scheme rule allows (no https -> http downgrade)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_scheme(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(read_timeout: float) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_HTTPHandler(read_timeout), _HTTPSHandler(read_timeout), _RedirectHandler())


class _Transient(Exception):
    """A failure worth retrying (timeout, dropped connection, 5xx)."""

    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _network_failure(url: str, exc: BaseException) -> Exception:
    """Classify a network exception: a :class:`_Transient` to retry, or a final DownloadError."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror) or (isinstance(reason, OSError) and reason.errno in _OFFLINE_ERRNOS):
        return DownloadError(f"Cannot reach {urllib.parse.urlsplit(url).hostname} to download {url} "
                             f"({reason}); this computer seems to be offline.",
                             "Connect to the network, or place the file by hand (see `kdseg models`).")
    if isinstance(reason, ssl.SSLCertVerificationError):
        return DownloadError(f"The TLS certificate of {urllib.parse.urlsplit(url).hostname} could not be "
                             f"verified ({reason.verify_message}).",
                             "Check the system clock and the certificate store (a proxy may intercept HTTPS).")
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return _Transient("timed out")
    return _Transient(str(reason) or type(reason).__name__)


def _retry_after(headers: Optional[Message]) -> float:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return min(float(value), _MAX_DELAY) if value else 0.0
    except ValueError:  # an HTTP date: not worth parsing for a short wait
        return 0.0


def _content_range(value: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    """(first byte, complete length) of a ``Content-Range: bytes a-b/n`` header."""
    try:
        unit, _, spec = (value or "").partition(" ")
        span, _, total = spec.partition("/")
        return (int(span.split("-")[0]) if unit == "bytes" else None), (int(total) if total.isdigit() else None)
    except ValueError:
        return None, None


def _size_mismatch(url: str, offered: int, expected: int, partial: Path) -> ChecksumError:
    if partial.exists():
        partial.unlink()
    return ChecksumError(f"{url} offers a file of {offered} bytes but the registry lists {expected} bytes; "
                         "nothing was kept.", "The server's file differs from the registry entry: check the "
                         "entry's URL, size and SHA-256.")


def _write_error(path: Path, exc: OSError) -> DownloadError:
    return DownloadError(f"Cannot write {path}: {exc.strerror or exc}.",
                         "Free disk space or choose another cache folder with the KDSEG_CACHE environment variable.")


def _fetch_http(opener: urllib.request.OpenerDirector, url: str, partial: Path, size_bytes: Optional[int],
                progress: Optional[ProgressCallback], cancel: Optional[CancelToken], connect_timeout: float) -> None:
    """One attempt: extend ``partial`` towards the complete file, or raise."""
    offset = partial.stat().st_size if partial.exists() else 0
    if size_bytes is not None and offset > size_bytes:
        partial.unlink()
        offset = 0
    if size_bytes is not None and offset == size_bytes:
        return  # complete from an earlier attempt that stopped before verifying
    request = urllib.request.Request(url, headers={"User-Agent": "KDSegmentation", "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = opener.open(request, timeout=connect_timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            partial.unlink()  # our partial does not fit the server's file: start again
            raise _Transient("server rejected the resume range") from None
        if exc.code >= 500 or exc.code in _RETRY_STATUS:
            raise _Transient(f"HTTP {exc.code} {exc.reason}", _retry_after(exc.headers)) from None
        if partial.exists():
            partial.unlink()
        raise DownloadError(f"Download of {url} failed: HTTP {exc.code} {exc.reason}.",
                            "Check the URL in the model registry entry.") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        failure = _network_failure(url, exc)
        raise failure from None
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and response.status == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != offset:
                partial.unlink()
                raise _Transient(f"server resumed at byte {first} instead of {offset}")
            if total is not None and size_bytes is not None and total != size_bytes:
                raise _size_mismatch(url, total, size_bytes, partial)
        else:
            offset = 0  # full body (the server ignored Range, or nothing to resume): restart
            if length is not None and size_bytes is not None and length != size_bytes:
                raise _size_mismatch(url, length, size_bytes, partial)
        expected_end = offset + length if length is not None else size_bytes
        total = size_bytes if size_bytes is not None else expected_end
        done = offset
        try:
            handle = open(partial, "ab" if offset else "wb")
        except OSError as exc:
            raise _write_error(partial, exc) from None
        with handle:
            while True:
                if cancel is not None and cancel.cancelled:
                    raise CancelledError(f"Download of {url} cancelled; {partial} is kept and the next "
                                         "attempt resumes it.")
                try:
                    block = response.read1(_CHUNK)  # what has arrived: a stall loses no received bytes
                except (http.client.HTTPException, OSError) as exc:
                    raise _network_failure(url, exc) from None
                if not block:
                    break
                try:
                    handle.write(block)
                except OSError as exc:
                    raise _write_error(partial, exc) from None
                done += len(block)
                if size_bytes is not None and done > size_bytes:
                    handle.close()
                    raise _size_mismatch(url, done, size_bytes, partial)
                report(progress, Stage.DOWNLOADING, done, total,
                       f"{done / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB")
    if expected_end is not None and done < expected_end:
        raise _Transient(f"connection closed after {done} of {expected_end} bytes")


def _copy_file(url: str, partial: Path, size_bytes: Optional[int], progress: Optional[ProgressCallback],
               cancel: Optional[CancelToken]) -> None:
    source = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    if not source.is_file():
        raise DownloadError(f"Weights file {source} (from {url}) does not exist.",
                            "Check the path in the model registry entry, or place the file by hand.")
    total = source.stat().st_size
    if size_bytes is not None and total != size_bytes:
        raise _size_mismatch(url, total, size_bytes, partial)
    done = 0
    try:
        with open(source, "rb") as reader, open(partial, "wb") as writer:
            for block in iter(lambda: reader.read(_HASH_BLOCK), b""):
                if cancel is not None and cancel.cancelled:
                    raise CancelledError(f"Copy of {source} cancelled.")
                writer.write(block)
                done += len(block)
                report(progress, Stage.DOWNLOADING, done, total, f"{done / 1e6:.1f} of {total / 1e6:.1f} MB")
    except CancelledError:
        partial.unlink()
        raise
    except OSError as exc:
        if partial.exists():
            partial.unlink()
        raise DownloadError(f"Copying {source} to {partial} failed: {exc.strerror or exc}.",
                            "Check the file's permissions and the free disk space.") from None


def _verify(path: Path, sha256: str, size_bytes: Optional[int], url: str) -> None:
    actual_size = path.stat().st_size
    if size_bytes is not None and actual_size != size_bytes:
        path.unlink()
        raise ChecksumError(f"The file downloaded from {url} has {actual_size} bytes, the registry lists "
                            f"{size_bytes}; the partial file was deleted.",
                            "Retry the download; if it happens again the server's file differs from the "
                            "registry entry.")
    actual = sha256_of(path)
    if actual != sha256:
        path.unlink()
        raise ChecksumError(f"SHA-256 mismatch for {url}: got {actual}, the registry lists {sha256}; the "
                            "downloaded file was deleted.", "Retry the download; if it happens again the "
                            "server's file differs from the registry entry.")


def _sleep(seconds: float, cancel: Optional[CancelToken], url: str) -> None:
    end = time.monotonic() + seconds
    while True:
        if cancel is not None and cancel.cancelled:
            raise CancelledError(f"Download of {url} cancelled.")
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))


def download_file(url: str, destination: Path, *, sha256: str, size_bytes: Optional[int] = None,
                  progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                  connect_timeout: float = 10.0, read_timeout: float = 30.0, retries: int = 4,
                  backoff: float = 1.0, lock_timeout: float = 1800.0) -> Path:
    """Download ``url`` to ``destination``, verified by size and SHA-256.

    Args:
        url: https:// (http:// only for 127.0.0.1/localhost/::1) or file:// location.
        destination: final path; it appears only once verified (atomic rename), and an
            existing verified file is returned as is.
        sha256: expected lowercase hex digest.
        size_bytes: expected size, or None (then only the digest is checked).
        progress: receives ``Stage.DOWNLOADING`` events counting bytes.
        cancel: checked between chunks and while waiting; the partial file is kept.
        connect_timeout: seconds to connect (and finish the TLS handshake).
        read_timeout: seconds to wait for each read before the attempt counts as timed out.
        retries: further attempts after timeouts, dropped connections, truncation, 408/429 and 5xx.
        backoff: first retry delay in seconds, doubled each time (a Retry-After header can lengthen it).
        lock_timeout: seconds to wait while another process downloads the same file.

    Returns:
        ``destination``.

    Raises:
        DownloadError: disallowed scheme, HTTP 4xx, missing file:// source, offline,
            unwritable folder, or retries exhausted (the partial file is kept for resuming).
        ChecksumError: size or digest mismatch (the bad file is deleted).
        CancelledError: ``cancel`` was set.
    """
    destination = Path(destination)
    scheme = _check_scheme(url)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(destination.parent, exc) from None
    partial = destination.with_name(destination.name + ".partial")
    with FileLock(destination.with_name(destination.name + ".lock"), lock_timeout, cancel):
        if destination.exists():
            # Another process may have finished while we waited for the lock.
            if (size_bytes is None or destination.stat().st_size == size_bytes) and sha256_of(destination) == sha256:
                report(progress, Stage.DOWNLOADING, destination.stat().st_size, destination.stat().st_size,
                       "already downloaded")
                return destination
            destination.unlink()
        if scheme == "file":
            _copy_file(url, partial, size_bytes, progress, cancel)
        else:
            opener = _opener(read_timeout)
            attempt = 0
            while True:
                try:
                    _fetch_http(opener, url, partial, size_bytes, progress, cancel, connect_timeout)
                    break
                except _Transient as failure:
                    attempt += 1
                    if attempt > retries:
                        kept = f" {partial} is kept and the next attempt resumes it." if partial.exists() else ""
                        raise DownloadError(f"Download of {url} failed after {attempt} attempts "
                                            f"(last: {failure.reason}).",
                                            f"Check the network connection and try again.{kept}") from None
                    delay = min(max(backoff * 2 ** (attempt - 1), failure.retry_after), _MAX_DELAY)
                    _log.warning("Download of %s failed (%s); retry %d of %d in %.1f s", url, failure.reason,
                                 attempt, retries, delay)
                    _sleep(delay, cancel, url)
        _verify(partial, sha256, size_bytes, url)
        os.replace(partial, destination)
    return destination
