"""Verified, resumable, atomic download of model weights.

The transport is ``requests`` (connect and read timeouts, proxies, TLS) and which
failures are worth retrying, and how Retry-After is read, is urllib3's ``Retry``; both
ship with 3D Slicer's Python. Resuming, cancelling, the size and SHA-256 checks and the
inter-process lock are ours. A download streams into ``<destination>.partial`` while holding an inter-process
lock on ``<destination>.lock``, resumes with an HTTP Range request when the server
honours it (206) and restarts otherwise, retries timeouts, dropped connections and
5xx answers with exponential backoff, and checks size and SHA-256 before renaming
the file into place. A file that fails verification is deleted, so the destination
only ever holds a complete, verified file, however many processes download at once.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import socket
import ssl
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

from ..errors import CancelledError, ChecksumError, DownloadError
from ..progress import CancelToken, ProgressCallback, Stage, report
from .download_timeouts import DEFAULT_READ_TIMEOUT_S
from .file_digest import sha256_of
from .url_policy import ALLOWED_LOCATIONS, fetch_scheme

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

__all__ = ["download_file", "sha256_of", "FileLock", "DownloadInterrupted"]

_log = logging.getLogger("KDSegmentationLib")
_CHUNK = 1 << 16
_HASH_BLOCK = 1 << 20
_MAX_DELAY = 60.0
_RETRY_STATUS = {408, 429}  # and every 5xx
_OFFLINE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_TIMEOUT_ERRORS = {"ReadTimeoutError", "ConnectTimeoutError", "ReadTimeout", "ConnectTimeout", "Timeout"}


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


# --- HTTP: requests for the transport, urllib3's Retry for the retry policy --------------
# requests/urllib3 ship with 3D Slicer's Python; they are imported when an HTTP download
# starts, so `kdseg models` and the module's start stay fast.

def _check_url(url: str) -> str:
    scheme = fetch_scheme(url)
    if scheme is None:
        raise DownloadError(f"Refusing to download {url}: {ALLOWED_LOCATIONS}.",
                            "Use an https:// location for the weights, or place the file by hand.")
    return scheme


def _session() -> Any:
    """A requests session that holds every redirect to the URL policy (no https -> http downgrade)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    class PolicySession(requests.Session):
        def get_redirect_target(self, resp: Any) -> Optional[str]:
            target = super().get_redirect_target(resp)
            if target:
                _check_url(urllib.parse.urljoin(resp.url, target))
            return target

    session = PolicySession()
    # Retries are decided by download_file() (they resume from the partial file and can be
    # cancelled), so the adapter itself never retries.
    adapter = HTTPAdapter(max_retries=Retry(total=0, read=False, redirect=False, raise_on_status=False))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update({"User-Agent": "KDSegmentation", "Accept-Encoding": "identity"})
    return session


def _retry_policy(retries: int) -> Any:
    """Which answers are worth retrying and how their Retry-After is read: urllib3's Retry.

    The attempts themselves are counted and spaced by :func:`_fetch_with_retries`.
    """
    from urllib3.util.retry import Retry

    return Retry(total=retries, redirect=False, status_forcelist=sorted(_RETRY_STATUS | set(range(500, 600))),
                 allowed_methods=["GET"], respect_retry_after_header=True, raise_on_status=False)


def _retry_after(policy: Any, response: Any) -> float:
    """Seconds the server asked us to wait (Retry-After as seconds or an HTTP date), 0 if none or unreadable."""
    from urllib3.exceptions import InvalidHeader

    try:
        return min(policy.get_retry_after(response.raw) or 0.0, _MAX_DELAY)
    except InvalidHeader:
        return 0.0


class _Transient(Exception):
    """A failure worth retrying (timeout, dropped connection, 408/429/5xx).

    Args:
        reason: short text for the log and the final error.
        retry_after: seconds the server asked us to wait (Retry-After), 0 if none.
    """

    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: requests and urllib3 nest the socket error several levels deep."""
    seen = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        stack.extend(e for e in linked if isinstance(e, BaseException))


def _network_failure(url: str, exc: BaseException) -> Exception:
    """Classify a network exception: a :class:`_Transient` to retry, or a final DownloadError."""
    host = urllib.parse.urlsplit(url).hostname
    causes = list(_causes(exc))
    if any(isinstance(c, socket.gaierror) or (isinstance(c, OSError) and c.errno in _OFFLINE_ERRNOS)
           for c in causes):
        return DownloadError(f"Cannot reach {host} to download {url} ({exc}); this computer seems to be offline.",
                             "Connect to the network, or place the file by hand (see `kdseg models`).")
    certificate = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
    if certificate is not None:
        return DownloadError(f"The TLS certificate of {host} could not be verified ({certificate.verify_message}).",
                             "Check the system clock and the certificate store (a proxy may intercept HTTPS).")
    if any(isinstance(c, (socket.timeout, TimeoutError)) or type(c).__name__ in _TIMEOUT_ERRORS for c in causes):
        return _Transient("timed out")
    return _Transient(str(exc) or type(exc).__name__)


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


class DownloadInterrupted(KeyboardInterrupt):
    """Ctrl-C during a download; ``partial`` (if not None) is kept and the next attempt resumes it."""

    def __init__(self, partial: Optional[Path]) -> None:
        super().__init__()
        self.partial = partial


def _write_error(path: Path, exc: OSError) -> DownloadError:
    return DownloadError(f"Cannot write {path}: {exc.strerror or exc}.",
                         "Free disk space or choose another cache folder with the KDSEG_CACHE environment variable.")


def _disk_full_error(partial: Path, size_bytes: Optional[int], exc: OSError) -> DownloadError:
    """Remove a partial download that cannot be finished here and say how much space it needs.

    Kept, it would fill the disk again on every retry.
    """
    try:
        partial.unlink()
    except OSError:
        pass
    try:
        free = f"{shutil.disk_usage(partial.parent).free / 1e6:.1f} MB are free"
    except OSError:
        free = "the free space is unknown"
    need = f"needs {size_bytes / 1e6:.1f} MB" if size_bytes is not None else "needs more space"
    return DownloadError(f"Cannot write {partial}: {exc.strerror or exc} (the download {need}; {free} in "
                         f"{partial.parent}); the partial file was removed.",
                         "Free that much disk space, or choose another cache folder with the KDSEG_CACHE "
                         "environment variable.")


def _write_failure(handle: Any, partial: Path, size_bytes: Optional[int], exc: OSError) -> DownloadError:
    if exc.errno not in _DISK_FULL_ERRNOS:
        return _write_error(partial, exc)
    try:
        handle.close()  # flushing what is buffered fails the same way
    except OSError:
        pass
    return _disk_full_error(partial, size_bytes, exc)


def _read_arrived(raw: Any) -> bytes:
    """The body bytes that have arrived (up to one chunk): a stall then loses none of them."""
    read1 = getattr(raw, "read1", None)  # urllib3 >= 2.1; older ones only block for a full chunk
    return read1(_CHUNK) if read1 is not None else raw.read(_CHUNK)


def _fetch_http(session: Any, policy: Any, url: str, partial: Path, size_bytes: Optional[int],
                progress: Optional[ProgressCallback], cancel: Optional[CancelToken],
                timeouts: Tuple[float, float]) -> None:
    """One attempt: extend ``partial`` towards the complete file, or raise."""
    import requests

    offset = partial.stat().st_size if partial.exists() else 0
    if size_bytes is not None and offset > size_bytes:
        partial.unlink()
        offset = 0
    if size_bytes is not None and offset == size_bytes:
        return  # complete from an earlier attempt that stopped before verifying
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeouts)
    except requests.RequestException as exc:
        raise _network_failure(url, exc) from None
    with response:
        status = response.status_code
        if status >= 400:
            reason = f"HTTP {status} {response.reason}"
            if status == 416 and offset:
                partial.unlink()  # our partial does not fit the server's file: start again
                raise _Transient("server rejected the resume range")
            if policy.is_retry("GET", status, has_retry_after="Retry-After" in response.headers):
                raise _Transient(reason, _retry_after(policy, response))
            if partial.exists():
                partial.unlink()
            raise DownloadError(f"Download of {url} failed: {reason}.", "Check the URL in the model registry entry.")
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and status == 206:
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
        try:
            with handle:
                done = _stream_body(response, handle, url, partial, size_bytes, done, total, progress, cancel)
        except OSError as exc:  # the final flush on close
            raise _write_failure(handle, partial, size_bytes, exc) from None
    if expected_end is not None and done < expected_end:
        raise _Transient(f"connection closed after {done} of {expected_end} bytes")


def _stream_body(response: Any, handle: Any, url: str, partial: Path, size_bytes: Optional[int], done: int,
                 total: Optional[int], progress: Optional[ProgressCallback], cancel: Optional[CancelToken]) -> int:
    """Append the response body to ``handle`` as it arrives; returns the bytes in ``partial`` so far."""
    import requests
    from urllib3.exceptions import HTTPError as Urllib3Error

    while True:
        if cancel is not None and cancel.cancelled:
            raise CancelledError(f"Download of {url} cancelled; {partial} is kept and the next "
                                 "attempt resumes it.")
        try:
            block = _read_arrived(response.raw)
        except (requests.RequestException, Urllib3Error, OSError) as exc:
            raise _network_failure(url, exc) from None
        if not block:
            break
        try:
            handle.write(block)
        except OSError as exc:
            raise _write_failure(handle, partial, size_bytes, exc) from None
        done += len(block)
        if size_bytes is not None and done > size_bytes:
            handle.close()
            raise _size_mismatch(url, done, size_bytes, partial)
        report(progress, Stage.DOWNLOADING, done, total,
               f"{done / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB")
    return done


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
        if exc.errno in _DISK_FULL_ERRNOS:
            raise _disk_full_error(partial, size_bytes if size_bytes is not None else total, exc) from None
        if partial.exists():
            partial.unlink()
        raise DownloadError(f"Copying {source} to {partial} failed: {exc.strerror or exc}.",
                            "Check the file's permissions and the free disk space.") from None


def _fetch_with_retries(url: str, partial: Path, size_bytes: Optional[int], progress: Optional[ProgressCallback],
                        cancel: Optional[CancelToken], timeouts: Tuple[float, float], retries: int,
                        backoff: float) -> None:
    """Attempts of :func:`_fetch_http` until the partial file is complete or the retries run out.

    Each retry resumes the partial file. The wait before retry n is ``backoff * 2 ** (n - 1)``
    seconds, or longer when the server's Retry-After asks for it, at most 60 s, and is
    cancellable (urllib3's own sleep is not).
    """
    session = _session()
    policy = _retry_policy(retries)
    with session:
        attempt = 0
        while True:
            try:
                _fetch_http(session, policy, url, partial, size_bytes, progress, cancel, timeouts)
                return
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
                  connect_timeout: float = 10.0, read_timeout: float = DEFAULT_READ_TIMEOUT_S, retries: int = 4,
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
        read_timeout: seconds to wait for each read before the attempt counts as timed out
            (``kdseg --timeout``, the module's download timeout setting).
        retries: further attempts after timeouts, dropped connections, truncation, 408/429 and 5xx.
        backoff: first retry delay in seconds, doubled each time (a Retry-After header can lengthen it).
        lock_timeout: seconds to wait while another process downloads the same file.

    Returns:
        ``destination``.

    Raises:
        DownloadError: disallowed scheme, HTTP 4xx, missing file:// source, offline,
            unwritable folder, or retries exhausted (the partial file is kept for resuming).
        ChecksumError: size or digest mismatch (the bad file is deleted; a kept partial file
            that fails is first fetched again from the start).
        CancelledError: ``cancel`` was set.
        DownloadInterrupted: Ctrl-C (a KeyboardInterrupt naming the kept partial file).
    """
    destination = Path(destination)
    scheme = _check_url(url)
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
        try:
            if scheme == "file":
                _copy_file(url, partial, size_bytes, progress, cancel)
                _verify(partial, sha256, size_bytes, url)
            else:
                _fetch_and_verify(url, partial, sha256, size_bytes, progress, cancel,
                                  (connect_timeout, read_timeout), retries, backoff)
        except KeyboardInterrupt:
            raise DownloadInterrupted(partial if partial.exists() else None) from None
        os.replace(partial, destination)
    return destination


def _fetch_and_verify(url: str, partial: Path, sha256: str, size_bytes: Optional[int],
                      progress: Optional[ProgressCallback], cancel: Optional[CancelToken],
                      timeouts: Tuple[float, float], retries: int, backoff: float) -> None:
    """Fetch (resuming a kept partial file) and verify; a resumed file that fails verification is
    fetched once more from the start in the same run, since its old part may be what is corrupt."""
    resumed = partial.exists() and partial.stat().st_size > 0
    _fetch_with_retries(url, partial, size_bytes, progress, cancel, timeouts, retries, backoff)
    try:
        _verify(partial, sha256, size_bytes, url)
    except ChecksumError:
        if not resumed:
            raise
        _log.warning("The kept partial download %s did not verify; it was deleted and %s is downloaded again",
                     partial, url)
        _fetch_with_retries(url, partial, size_bytes, progress, cancel, timeouts, retries, backoff)
        _verify(partial, sha256, size_bytes, url)
