"""Downloads against a real HTTP server on 127.0.0.1 that misbehaves in the ways networks do."""

import hashlib
import http.server
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from KDSegmentationLib.download import download_file
from KDSegmentationLib.errors import ChecksumError, DownloadError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    counts = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.strip("/")
        n = _Handler.counts[name] = _Handler.counts.get(name, 0) + 1
        start = 0
        rng = self.headers.get("Range")
        if rng and name in ("ok", "truncate-once"):
            start = int(rng.split("=")[1].split("-")[0])
        body = PAYLOAD[start:]
        if name == "missing":
            self.send_error(404, "Not Found")
            return
        if name == "flaky" and n == 1:
            self.send_error(500, "Internal Server Error")
            return
        if name == "corrupt":
            body = b"x" + PAYLOAD[1:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        if name == "truncate-once" and n == 1:
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.close()
            return
        if name == "stall":
            self.wfile.write(body[:1000])
            self.wfile.flush()
            time.sleep(3)
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _leftovers(dest: Path):
    return sorted(p.name for p in dest.parent.iterdir())


def test_download_verifies_and_renames(server, tmp_path):
    dest = tmp_path / "m.onnx"
    events = []
    download_file(f"{server}/ok", dest, sha256=SHA, size_bytes=len(PAYLOAD), progress=events.append)
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest) == ["m.onnx"]
    assert events[-1].current == len(PAYLOAD)


def test_truncated_transfer_is_resumed_with_range(server, tmp_path):
    dest = tmp_path / "m.onnx"
    download_file(f"{server}/truncate-once", dest, sha256=SHA, size_bytes=len(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.counts["truncate-once"] == 2


def test_corrupt_file_is_deleted_and_reported(server, tmp_path):
    dest = tmp_path / "m.onnx"
    with pytest.raises(ChecksumError, match="SHA-256 mismatch.*deleted"):
        download_file(f"{server}/corrupt", dest, sha256=SHA, size_bytes=len(PAYLOAD))
    assert _leftovers(dest) == []


def test_404_fails_without_retrying(server, tmp_path):
    dest = tmp_path / "m.onnx"
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server}/missing", dest, sha256=SHA, size_bytes=len(PAYLOAD))
    assert _Handler.counts["missing"] == 1
    assert _leftovers(dest) == []


def test_500_then_200_is_retried(server, tmp_path):
    dest = tmp_path / "m.onnx"
    download_file(f"{server}/flaky", dest, sha256=SHA, size_bytes=len(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD


def test_stalled_server_times_out_and_leaves_no_final_file(server, tmp_path):
    dest = tmp_path / "m.onnx"
    with pytest.raises(DownloadError, match="after 2 attempts"):
        download_file(f"{server}/stall", dest, sha256=SHA, size_bytes=len(PAYLOAD), read_timeout=0.5,
                      retries=1, backoff=0.01)
    assert not dest.exists()
    assert not (tmp_path / "m.onnx.lock").exists()


def test_plain_http_to_other_hosts_is_refused(tmp_path):
    with pytest.raises(DownloadError, match="only https"):
        download_file("http://example.org/m.onnx", tmp_path / "m.onnx", sha256=SHA)


def _download_in_process(url, dest):
    download_file(url, Path(dest), sha256=SHA, size_bytes=len(PAYLOAD))


def test_two_processes_downloading_at_once_leave_one_valid_file(server, tmp_path):
    dest = tmp_path / "cache" / "m.onnx"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_download_in_process, args=(f"{server}/ok", str(dest))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest) == ["m.onnx"]
