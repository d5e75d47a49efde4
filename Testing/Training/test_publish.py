"""Publishing: `kdseg-train export --url` writes a complete release; `kdseg download` fetches and verifies it.

The download runs against a real HTTP server on 127.0.0.1 (the only plain-http host the
Lib accepts); the model is trained for a few steps only (plumbing, never offered to users).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading

import pytest

from KDSegmentationLib.cli import main as kdseg
from kdseg_train.cli import main as kdseg_train
from test_release import _config

MODEL_ID = "tiny-release-test"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """(folder served at http://127.0.0.1:PORT/, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_export_for_publishing_then_download_and_verify(tmp_path, shared_data, served, monkeypatch, capsys):
    root, base = served
    config = _config(tmp_path, shared_data)
    assert kdseg_train(["train", str(config)]) == 0
    assert kdseg_train(["evaluate", str(config), "--backend", "pytorch"]) == 0
    url = f"{base}/models/{MODEL_ID}.onnx"
    assert kdseg_train(["export", str(config), "--url", url]) == 2
    assert "needs the licence of the training data" in capsys.readouterr().err
    assert kdseg_train(["export", str(config), "--url", "ftp://example.org/m.onnx", "--data-licence", "x"]) == 2
    assert "must be an https:// address" in capsys.readouterr().err
    licence = "TotalSegmentator dataset: CC BY 4.0"
    assert kdseg_train(["export", str(config), "--url", url, "--data-licence", licence]) == 0
    release = tmp_path / "run" / "release"
    assert sorted(p.name for p in release.iterdir()) == sorted(
        ["model.onnx", "registry.json", "SHA256SUMS", f"{MODEL_ID}.md", f"{MODEL_ID}.registry-entry.json"])
    onnx = (release / "model.onnx").read_bytes()
    digest = hashlib.sha256(onnx).hexdigest()
    assert (release / "SHA256SUMS").read_text(encoding="utf-8") == f"{digest}  model.onnx\n"
    entry = json.loads((release / f"{MODEL_ID}.registry-entry.json").read_text(encoding="utf-8"))
    assert entry["urls"] == [url] and entry["sha256"] == digest and entry["size_bytes"] == len(onnx)
    assert entry["training"]["data"]["licences"] == [licence] and entry["license"] == "Apache-2.0"
    card_text = (release / f"{MODEL_ID}.md").read_text(encoding="utf-8")
    for expected in (digest, url, licence, f"{len(onnx):,} bytes", "| liver |", "tests only"):
        assert expected in card_text

    # A maintainer adds the one entry to a registry; users' kdseg fetches the file from the URL.
    maintainer = tmp_path / "maintainer"
    maintainer.mkdir()
    version = json.loads((release / "registry.json").read_text(encoding="utf-8"))["schema_version"]
    (maintainer / "registry.json").write_text(json.dumps({"schema_version": version, "default_model_id": MODEL_ID,
                                                          "models": [entry]}))
    (root / "models").mkdir()
    shutil.copyfile(release / "model.onnx", root / "models" / f"{MODEL_ID}.onnx")
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDSEG_CACHE", str(cache))
    assert kdseg(["--registry", str(maintainer / "registry.json"), "download", MODEL_ID]) == 0
    assert "verified weights" in capsys.readouterr().out
    cached = [p for p in cache.rglob("*.onnx")]
    assert len(cached) == 1 and hashlib.sha256(cached[0].read_bytes()).hexdigest() == digest

    # A file on the server that is not the released one is refused and not cached.
    shutil.rmtree(cache)
    (root / "models" / f"{MODEL_ID}.onnx").write_bytes(onnx[:-1] + bytes([onnx[-1] ^ 1]))
    assert kdseg(["--registry", str(maintainer / "registry.json"), "download", MODEL_ID]) == 5
    err = capsys.readouterr().err
    assert "SHA-256 mismatch" in err
    assert not list(cache.rglob("*.onnx"))
