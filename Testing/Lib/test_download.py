"""Downloads against a real HTTP server on 127.0.0.1 that misbehaves in the ways networks do.

Each test uses its own URL path (``/<mode>/<test name>``) so request counts and the
Range headers the server saw belong to that test alone.
"""

import hashlib
import http.server
import logging
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from KDSegmentationLib.weights.download import FileLock, download_file
from KDSegmentationLib.errors import CancelledError, ChecksumError, DownloadError
from KDSegmentationLib.progress import CancelToken, Stage

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()
SIZE = len(PAYLOAD)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at ``/<mode>/<anything>``; ``mode`` picks the misbehaviour."""

    requests = {}  # path -> list of Range headers (None when absent)
    sent = {}  # path -> body bytes written

    def log_message(self, *args):
        pass

    def _body(self, data, status=200, headers=()):
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        # Counted before writing: the client may have read everything and the test checked the
        # count before this thread ran again.
        _Handler.sent[self.path] = _Handler.sent.get(self.path, 0) + len(data)
        self.wfile.write(data)

    def _serve(self, honour_range=True, first_byte_shift=0):
        rng = self.headers.get("Range")
        if rng and honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            shown = start + first_byte_shift
            self._body(PAYLOAD[start:], 206, [("Content-Range", f"bytes {shown}-{SIZE - 1}/{SIZE}")])
        else:
            self._body(PAYLOAD)

    def do_GET(self):
        mode = self.path.strip("/").split("/")[0]
        seen = _Handler.requests.setdefault(self.path, [])
        seen.append(self.headers.get("Range"))
        n = len(seen)
        if mode == "ok":
            self._serve()
        elif mode == "norange":
            self._serve(honour_range=False)
        elif mode == "badrange":
            self._serve(first_byte_shift=n == 1 and 7 or 0)
        elif mode == "missing":
            self.send_error(404, "Not Found")
        elif mode == "flaky" and n == 1:
            self.send_error(500, "Internal Server Error")
        elif mode == "flaky":
            self._serve()
        elif mode == "down":
            self.send_error(503, "Service Unavailable")
        elif mode == "busy" and n == 1:
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "busy":
            self._serve()
        elif mode == "later" and n == 1:
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "later":
            self._serve()
        elif mode == "corrupt":
            self._body(b"x" + PAYLOAD[1:])
        elif mode == "wrongsize":
            self._body(PAYLOAD[:-10])
        elif mode == "truncate-once" and n == 1:
            self.send_response(200)
            self.send_header("Content-Length", str(SIZE))
            self.end_headers()
            self.wfile.write(PAYLOAD[: SIZE // 3])
            self.wfile.flush()
            self.close_connection = True
        elif mode == "truncate-once":
            self._serve()
        elif mode == "stall":
            self.send_response(200)
            self.send_header("Content-Length", str(SIZE))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.wfile.flush()
            time.sleep(2)  # longer than the test's read timeout, bounded so the server thread ends
            self.close_connection = True
        elif mode == "slow":
            self.send_response(200)
            self.send_header("Content-Length", str(SIZE))
            self.end_headers()
            for i in range(0, SIZE, SIZE // 16):
                self.wfile.write(PAYLOAD[i:i + SIZE // 16])
                self.wfile.flush()
                time.sleep(0.03)
        elif mode == "redirect-http":
            self.send_response(302)
            self.send_header("Location", "http://example.com/model.onnx")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "redirect-ok":
            self.send_response(302)
            self.send_header("Location", "/ok" + self.path[len("/redirect-ok"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(400, "unknown mode")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # The client hanging up early (cancel, size check, timeout) is what several tests do.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def url(server, request):
    """``url("ok")`` -> this test's own URL for mode ``ok``."""
    return lambda mode: f"{server}/{mode}/{request.node.name}"


def _path(full_url):
    return "/" + full_url.split("/", 3)[3]


def _files(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def test_download_verifies_renames_and_reports_progress(url, tmp_path):
    dest = tmp_path / "m.onnx"
    events = []
    assert download_file(url("ok"), dest, sha256=SHA, size_bytes=SIZE, progress=events.append) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _files(tmp_path) == ["m.onnx"]
    assert all(e.stage == Stage.DOWNLOADING and e.total == SIZE for e in events)
    done = [e.current for e in events]
    assert done == sorted(done) and done[-1] == SIZE and len(done) > 1


def test_partial_file_is_resumed_with_range(url, tmp_path):
    dest = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.partial").write_bytes(PAYLOAD[:300_000])
    download_file(url("ok"), dest, sha256=SHA, size_bytes=SIZE)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.requests[_path(url("ok"))] == ["bytes=300000-"]
    assert _Handler.sent[_path(url("ok"))] == SIZE - 300_000
    assert _files(tmp_path) == ["m.onnx"]


def test_server_ignoring_range_restarts_from_scratch(url, tmp_path):
    dest = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.partial").write_bytes(PAYLOAD[:300_000])
    download_file(url("norange"), dest, sha256=SHA, size_bytes=SIZE)
    assert dest.read_bytes() == PAYLOAD  # not the 300 kB prefix twice
    assert _Handler.requests[_path(url("norange"))] == ["bytes=300000-"]


def test_server_resuming_at_the_wrong_byte_is_not_trusted(url, tmp_path):
    dest = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.partial").write_bytes(PAYLOAD[:300_000])
    download_file(url("badrange"), dest, sha256=SHA, size_bytes=SIZE, backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.requests[_path(url("badrange"))] == ["bytes=300000-", None]


def test_truncated_transfer_is_resumed_with_range(url, tmp_path):
    dest = tmp_path / "m.onnx"
    download_file(url("truncate-once"), dest, sha256=SHA, size_bytes=SIZE, backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.requests[_path(url("truncate-once"))] == [None, f"bytes={SIZE // 3}-"]


def test_corrupt_file_is_deleted_and_reported(url, tmp_path):
    dest = tmp_path / "m.onnx"
    with pytest.raises(ChecksumError, match="SHA-256 mismatch.*was deleted") as info:
        download_file(url("corrupt"), dest, sha256=SHA, size_bytes=SIZE)
    assert url("corrupt") in info.value.message and SHA in info.value.message
    assert info.value.exit_code == 5
    assert _files(tmp_path) == []


def test_corrupt_partial_is_deleted_and_fetched_again_in_the_same_run(url, tmp_path, caplog):
    dest = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.partial").write_bytes(b"\0" * 300_000)  # resumable length, wrong bytes
    with caplog.at_level(logging.WARNING, logger="KDSegmentationLib"):
        download_file(url("ok"), dest, sha256=SHA, size_bytes=SIZE)
    assert dest.read_bytes() == PAYLOAD and _files(tmp_path) == ["m.onnx"]
    assert _Handler.requests[_path(url("ok"))] == ["bytes=300000-", None]  # resumed, failed, fetched whole
    assert "did not verify" in caplog.text


def test_full_size_corrupt_partial_is_discarded_and_fetched_again(url, tmp_path):
    """A complete-looking partial (killed before verification) used to fail once with a checksum
    error naming a URL that was never contacted."""
    dest = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.partial").write_bytes(b"\0" * SIZE)
    download_file(url("ok"), dest, sha256=SHA, size_bytes=SIZE)
    assert dest.read_bytes() == PAYLOAD and _files(tmp_path) == ["m.onnx"]
    assert _Handler.requests[_path(url("ok"))] == [None]


def test_server_serving_a_corrupt_file_is_still_reported_after_the_second_try(url, tmp_path):
    dest = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.partial").write_bytes(PAYLOAD[:1000])
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        download_file(url("corrupt"), dest, sha256=SHA, size_bytes=SIZE)
    assert _files(tmp_path) == []


def test_size_announced_by_the_server_is_checked_before_downloading(url, tmp_path):
    with pytest.raises(ChecksumError, match=f"offers a file of {SIZE - 10} bytes.*lists {SIZE} bytes"):
        download_file(url("wrongsize"), tmp_path / "m.onnx", sha256=SHA, size_bytes=SIZE)
    assert _Handler.requests[_path(url("wrongsize"))] == [None]
    assert _files(tmp_path) == []


def test_404_fails_without_retrying(url, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download_file(url("missing"), tmp_path / "m.onnx", sha256=SHA, size_bytes=SIZE)
    assert url("missing") in info.value.message
    assert len(_Handler.requests[_path(url("missing"))]) == 1
    assert _files(tmp_path) == []


def test_500_then_200_is_retried_with_a_warning(url, tmp_path, caplog):
    dest = tmp_path / "m.onnx"
    with caplog.at_level(logging.WARNING, logger="KDSegmentationLib"):
        download_file(url("flaky"), dest, sha256=SHA, size_bytes=SIZE, backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert len(_Handler.requests[_path(url("flaky"))]) == 2
    assert any("HTTP 500" in r.getMessage() and "retry 1 of 4" in r.getMessage() for r in caplog.records)


def test_429_is_retried(url, tmp_path):
    dest = tmp_path / "m.onnx"
    download_file(url("busy"), dest, sha256=SHA, size_bytes=SIZE, backoff=0.01)
    assert dest.read_bytes() == PAYLOAD


def test_retry_after_is_waited_for_and_logged(url, tmp_path, caplog):
    dest = tmp_path / "m.onnx"
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="KDSegmentationLib"):
        download_file(url("later"), dest, sha256=SHA, size_bytes=SIZE, backoff=0.01)
    assert time.monotonic() - start >= 1.0  # the server's 1 s, not the 0.01 s backoff
    assert dest.read_bytes() == PAYLOAD
    assert any("HTTP 503" in r.getMessage() and "in 1.0 s" in r.getMessage() for r in caplog.records)


def test_persistent_5xx_gives_up_after_the_retries(url, tmp_path):
    with pytest.raises(DownloadError, match=r"failed after 3 attempts \(last: HTTP 503"):
        download_file(url("down"), tmp_path / "m.onnx", sha256=SHA, size_bytes=SIZE, retries=2, backoff=0.01)
    assert len(_Handler.requests[_path(url("down"))]) == 3
    assert _files(tmp_path) == []


def test_stalled_server_times_out_and_keeps_the_partial_for_resuming(url, tmp_path):
    dest = tmp_path / "m.onnx"
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"after 2 attempts \(last: timed out\)") as info:
        download_file(url("stall"), dest, sha256=SHA, size_bytes=SIZE, connect_timeout=2, read_timeout=0.3,
                      retries=1, backoff=0.01)
    assert time.monotonic() - start < 1.5  # two 0.3 s read timeouts, not the server's 2 s stalls
    assert "resumes it" in info.value.hint
    assert _files(tmp_path) == ["m.onnx.partial"]  # never the final name
    assert (tmp_path / "m.onnx.partial").read_bytes() == PAYLOAD[:1000]
    assert _Handler.requests[_path(url("stall"))] == [None, "bytes=1000-"]


def test_cancel_keeps_the_partial_and_the_next_call_resumes(url, tmp_path):
    dest = tmp_path / "m.onnx"
    cancel = CancelToken()

    def progress(event):
        if event.current >= 200_000:
            cancel.cancel()

    with pytest.raises(CancelledError, match="cancelled"):
        download_file(url("ok"), dest, sha256=SHA, size_bytes=SIZE, progress=progress, cancel=cancel)
    kept = (tmp_path / "m.onnx.partial").stat().st_size
    assert 200_000 <= kept < SIZE and _files(tmp_path) == ["m.onnx.partial"]
    download_file(url("ok"), dest, sha256=SHA, size_bytes=SIZE)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.requests[_path(url("ok"))] == [None, f"bytes={kept}-"]


def test_plain_http_to_other_hosts_is_refused_also_after_a_redirect(url, tmp_path):
    with pytest.raises(DownloadError, match="only https"):
        download_file("http://example.org/m.onnx", tmp_path / "m.onnx", sha256=SHA)
    with pytest.raises(DownloadError, match="Refusing to download http://example.com/model.onnx"):
        download_file(url("redirect-http"), tmp_path / "m.onnx", sha256=SHA, size_bytes=SIZE)
    download_file(url("redirect-ok"), tmp_path / "m.onnx", sha256=SHA, size_bytes=SIZE)
    assert (tmp_path / "m.onnx").read_bytes() == PAYLOAD


def test_unresolvable_host_fails_at_once_as_offline(tmp_path, monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="weights.invalid.*offline"):
        download_file("https://weights.invalid/m.onnx", tmp_path / "m.onnx", sha256=SHA, size_bytes=SIZE)
    assert time.monotonic() - start < 5  # no retries with backoff for a name that does not resolve


def test_file_url_is_copied_with_the_same_verification(tmp_path):
    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    cache = tmp_path / "cache"
    events = []
    path = download_file(source.as_uri(), cache / "m.onnx", sha256=SHA, size_bytes=SIZE, progress=events.append)
    assert path.read_bytes() == PAYLOAD and events[-1].current == SIZE
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        download_file(source.as_uri(), cache / "other.onnx", sha256="0" * 64, size_bytes=SIZE)
    with pytest.raises(ChecksumError, match="lists 12 bytes"):
        download_file(source.as_uri(), cache / "other.onnx", sha256=SHA, size_bytes=12)
    with pytest.raises(DownloadError, match="does not exist"):
        download_file((tmp_path / "absent.onnx").as_uri(), cache / "other.onnx", sha256=SHA)
    assert _files(cache) == ["m.onnx"]


def test_unwritable_destination_is_a_clear_error(url, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be", encoding="utf-8")
    with pytest.raises(DownloadError, match=f"Cannot write {blocker}") as info:
        download_file(url("ok"), blocker / "m.onnx", sha256=SHA, size_bytes=SIZE)
    assert "KDSEG_CACHE" in info.value.hint
    assert _path(url("ok")) not in _Handler.requests


def test_existing_verified_destination_is_not_downloaded_again(url, tmp_path):
    dest = tmp_path / "m.onnx"
    dest.write_bytes(PAYLOAD)
    download_file(url("ok"), dest, sha256=SHA, size_bytes=SIZE)
    assert _path(url("ok")) not in _Handler.requests
    dest.write_bytes(b"\0" * SIZE)  # corrupt: replaced by a verified download
    download_file(url("ok"), dest, sha256=SHA, size_bytes=SIZE)
    assert dest.read_bytes() == PAYLOAD


def _download_in_process(url, dest):
    download_file(url, Path(dest), sha256=SHA, size_bytes=SIZE)


def test_two_processes_downloading_at_once_leave_one_valid_file(url, tmp_path):
    dest = tmp_path / "cache" / "m.onnx"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_download_in_process, args=(url("slow"), str(dest))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert dest.read_bytes() == PAYLOAD
    assert _files(dest.parent) == ["m.onnx"]
    # The second process waited for the first and found the verified file: one transfer.
    assert _Handler.requests[_path(url("slow"))] == [None]


def _hold_lock(path, ready):
    with FileLock(Path(path)):
        ready.set()
        time.sleep(60)


def test_lock_of_a_killed_process_is_released(tmp_path):
    lock_path = tmp_path / "m.onnx.lock"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(lock_path), ready))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(DownloadError, match=f"held by process {holder.pid}"):
            with FileLock(lock_path, timeout=0.3):
                pass
    finally:
        holder.kill()
        holder.join(10)
    start = time.monotonic()
    with FileLock(lock_path, timeout=5):
        assert lock_path.read_text().strip() == str(os.getpid())
    assert time.monotonic() - start < 1
    assert not lock_path.exists()


# --- full disks, the read timeout option, Ctrl-C -------------------------------------------------

def _mount_small_tmpfs(folder: Path, size: int) -> bool:
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class _DiskFullAfter:
    """A file object whose writes fail with ENOSPC once ``limit`` bytes are written (where tmpfs cannot be mounted)."""

    def __init__(self, handle, limit):
        self._handle, self._limit = handle, limit

    def write(self, data):
        import errno

        if self._handle.tell() + len(data) > self._limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def test_full_disk_removes_the_partial_and_says_how_much_space_is_needed(url, tmp_path, monkeypatch):
    from KDSegmentationLib.weights import download

    folder = tmp_path / "cache"
    real = _mount_small_tmpfs(folder, 256 * 1024)
    try:
        if not real:
            monkeypatch.setattr(download, "open", lambda *a, **k: _DiskFullAfter(open(*a, **k), 256 * 1024),
                                raising=False)
        with pytest.raises(DownloadError) as info:
            download_file(url("ok"), folder / "m.onnx", sha256=SHA, size_bytes=SIZE, retries=0)
        text = str(info.value)
        assert "needs 1.0 MB" in text and "MB are free" in text and "partial file was removed" in text
        assert "KDSEG_CACHE" in info.value.hint and "\n" not in text
        assert _files(folder) == []  # no partial left to fill the disk again on the next try
    finally:
        if real:
            import subprocess

            subprocess.run(["umount", str(folder)], capture_output=True, timeout=30)


def _registry_with_remote_weights(tmp_path, weights_url):
    from KDSegmentationLib.weights.model_registry import InputSpec, ModelCard, labels_from_anatomy, write_registry

    card = ModelCard(
        id="remote-test", title="Remote test weights", version="0.0.0", description="served by the test server",
        architecture="student-shsa", file="m.onnx", size_bytes=SIZE, sha256=SHA, urls=(weights_url,),
        input=InputSpec(1, 64, 64, (-125.0, 275.0)), labels=labels_from_anatomy(), license="Apache-2.0",
        intended_use="download tests only")
    return write_registry(tmp_path / "registry.json", [card], "remote-test")


def test_timeout_option_reaches_the_download(url, tmp_path, monkeypatch, capsys):
    from KDSegmentationLib.cli import main
    from KDSegmentationLib.weights import download

    seen = []
    real = download.download_file

    def recording(*args, **kwargs):
        seen.append(kwargs.get("read_timeout"))
        return real(*args, **kwargs)

    monkeypatch.setattr(download, "download_file", recording)
    monkeypatch.setenv("KDSEG_CACHE", str(tmp_path / "cache"))
    registry = _registry_with_remote_weights(tmp_path, url("ok"))
    assert main(["--registry", str(registry), "download", "remote-test", "--timeout", "7.5"]) == 0
    assert seen == [7.5]
    assert main(["--registry", str(registry), "download", "remote-test", "--timeout", "0"]) == 2
    assert "between 1 and 3600 seconds" in capsys.readouterr().err


def test_ctrl_c_during_download_says_the_partial_is_kept(url, tmp_path, monkeypatch, capsys):
    from KDSegmentationLib.cli import main
    from KDSegmentationLib.weights import download

    blocks = []
    real_read = download._read_arrived

    def interrupted(raw):
        blocks.append(1)
        if len(blocks) == 3:
            raise KeyboardInterrupt
        return real_read(raw)

    monkeypatch.setattr(download, "_read_arrived", interrupted)
    monkeypatch.setenv("KDSEG_CACHE", str(tmp_path / "cache"))
    registry = _registry_with_remote_weights(tmp_path, url("ok"))
    assert main(["--registry", str(registry), "download", "remote-test"]) == 130
    err = capsys.readouterr().err
    partials = list((tmp_path / "cache").rglob("*.partial"))
    assert len(partials) == 1 and partials[0].stat().st_size > 0
    assert err.startswith("error: interrupted (Ctrl-C); the partial download") and str(partials[0]) in err
    assert "next run resumes it" in err and len(err.strip().splitlines()) == 1

