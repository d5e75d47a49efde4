"""Weight resolution (bundled -> cache -> each URL), verification, offline errors, cache folder."""

import dataclasses
import hashlib
import shutil
import sys
from pathlib import Path

import pytest

from KDSegmentationLib.weights import resolution as weights_module
from KDSegmentationLib.errors import ChecksumError, WeightsError
from KDSegmentationLib.weights.model_registry import load_registry
from KDSegmentationLib.weights.resolution import cache_dir, cached_path, is_available_offline, resolve_weights


@pytest.fixture
def card_and_store(plumbing_registry, tmp_path):
    """The plumbing card with its file moved out of the registry folder into ``store/``."""
    registry = load_registry(plumbing_registry)
    card = registry.get()
    store = tmp_path / "store"
    store.mkdir()
    shutil.move(str(registry.directory / card.file), store / card.file)
    return card, registry.directory, store


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundled_file_is_used_and_hashed_once_per_process(plumbing_registry, tmp_path, monkeypatch):
    registry = load_registry(plumbing_registry)
    card = registry.get()
    calls = []
    real = weights_module.sha256_of
    monkeypatch.setattr(weights_module, "sha256_of", lambda path: calls.append(path) or real(path))
    for _ in range(3):
        path = resolve_weights(card, registry.directory, cache=tmp_path / "cache", allow_download=False)
        assert path == registry.directory / card.file
    assert is_available_offline(card, registry.directory, tmp_path / "cache")
    assert len(calls) == 1
    assert not (tmp_path / "cache").exists()  # a bundled model never touches the cache


def test_missing_bundle_is_fetched_into_the_cache_then_works_offline(card_and_store, tmp_path):
    card, registry_dir, store = card_and_store
    card = dataclasses.replace(card, urls=((store / card.file).as_uri(),))
    cache = tmp_path / "cache"
    assert not is_available_offline(card, registry_dir, cache)
    path = resolve_weights(card, registry_dir, cache=cache)
    assert path == cached_path(card, cache) == cache / card.id / card.sha256[:16] / card.file
    assert _sha(path) == card.sha256
    assert sorted(p.name for p in path.parent.iterdir()) == [card.file]
    (store / card.file).unlink()
    assert is_available_offline(card, registry_dir, cache)
    assert resolve_weights(card, registry_dir, cache=cache, allow_download=False) == path


def test_a_fresh_download_is_not_hashed_again_by_a_later_check(card_and_store, tmp_path, monkeypatch):
    """The download verified the SHA-256 on the worker; the module's model list, refreshed on
    the GUI thread afterwards, must not hash the file a second time."""
    import threading

    from KDSegmentationLib.weights import download as download_module

    card, registry_dir, store = card_and_store
    card = dataclasses.replace(card, urls=((store / card.file).as_uri(),))
    cache = tmp_path / "cache"
    hashed_on = []
    real = download_module.sha256_of

    def counting(path):
        hashed_on.append(threading.current_thread().name)
        return real(path)

    monkeypatch.setattr(download_module, "sha256_of", counting)
    monkeypatch.setattr(weights_module, "sha256_of", counting)
    worker = threading.Thread(target=resolve_weights, args=(card, registry_dir), kwargs={"cache": cache},
                              name="worker")
    worker.start()
    worker.join(60)
    assert _sha(cached_path(card, cache)) == card.sha256
    assert set(hashed_on) == {"worker"}  # downloaded and verified there
    hashed_on.clear()
    assert is_available_offline(card, registry_dir, cache)  # the GUI thread's check
    assert hashed_on == []


def test_download_progress_is_throttled_to_ten_updates_a_second(card_and_store, tmp_path, monkeypatch):
    """Whatever the transport reports (one event per 64 KB over HTTP), the caller of
    resolve_weights (CLI bar, module panel) gets at most ~10 updates a second."""
    import time

    from KDSegmentationLib.progress import ProgressEvent, Stage

    card, registry_dir, store = card_and_store
    card = dataclasses.replace(card, urls=((store / card.file).as_uri(),))
    real_download = weights_module.download_file

    def chunky_download(url, target, **kwargs):
        for done in range(0, card.size_bytes, 1024):  # a transport reporting every KB
            kwargs["progress"](ProgressEvent(Stage.DOWNLOADING, done, card.size_bytes))
        return real_download(url, target, **kwargs)

    monkeypatch.setattr(weights_module, "download_file", chunky_download)
    events = []
    started = time.monotonic()
    resolve_weights(card, registry_dir, cache=tmp_path / "cache", progress=events.append)
    elapsed = time.monotonic() - started
    downloads = [e for e in events if e.stage == Stage.DOWNLOADING]
    assert card.size_bytes // 1024 > 100
    assert 1 <= len(downloads) <= 2 + 10 * elapsed
    assert downloads[-1].current == downloads[-1].total == card.size_bytes  # the end always gets through


def test_offline_error_names_urls_cache_path_and_file(card_and_store, tmp_path, monkeypatch):
    card, registry_dir, _ = card_and_store
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    url = "https://weights.invalid/releases/v1/model.onnx"
    card = dataclasses.replace(card, urls=(url,))
    cache = tmp_path / "cache"
    target = cached_path(card, cache)
    for allow_download in (False, True):  # not allowed to download / no network
        with pytest.raises(WeightsError) as info:
            resolve_weights(card, registry_dir, cache=cache, allow_download=allow_download)
        assert card.id in info.value.message
        hint = info.value.hint
        assert url in hint and str(target) in hint and card.file in hint and card.sha256 in hint
        assert info.value.exit_code == 5
    assert "offline" in info.value.message and url in info.value.message
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_relative_url_resolves_against_the_registry_folder(card_and_store, tmp_path):
    card, registry_dir, store = card_and_store
    (registry_dir / "weights").mkdir()
    shutil.copyfile(store / card.file, registry_dir / "weights" / "model-v1.onnx")
    card = dataclasses.replace(card, urls=("weights/model-v1.onnx",))
    path = resolve_weights(card, registry_dir, cache=tmp_path / "cache")
    assert path == cached_path(card, tmp_path / "cache") and _sha(path) == card.sha256


def test_each_url_is_tried_in_order(card_and_store, tmp_path):
    card, registry_dir, store = card_and_store
    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(b"\0" * card.size_bytes)  # right size, wrong content
    urls = ((tmp_path / "absent.onnx").as_uri(), wrong.as_uri(), (store / card.file).as_uri())
    path = resolve_weights(dataclasses.replace(card, urls=urls), registry_dir, cache=tmp_path / "cache")
    assert _sha(path) == card.sha256


def test_every_location_failing_verification_is_a_checksum_error(card_and_store, tmp_path):
    card, registry_dir, _ = card_and_store
    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(b"\0" * card.size_bytes)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="SHA-256 mismatch.*deleted") as info:
        resolve_weights(dataclasses.replace(card, urls=(wrong.as_uri(),)), registry_dir, cache=cache)
    assert str(cached_path(card, cache)) in info.value.hint
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_corrupt_cache_entry_is_replaced(card_and_store, tmp_path):
    card, registry_dir, store = card_and_store
    card = dataclasses.replace(card, urls=((store / card.file).as_uri(),))
    cache = tmp_path / "cache"
    target = cached_path(card, cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * card.size_bytes)  # right size, wrong content
    assert not is_available_offline(card, registry_dir, cache)
    path = resolve_weights(card, registry_dir, cache=cache)
    assert path == target and _sha(path) == card.sha256


def test_corrupt_cache_and_bundle_are_reported_offline(card_and_store, tmp_path):
    card, registry_dir, store = card_and_store
    (registry_dir / card.file).write_bytes(b"\1" * card.size_bytes)
    cache = tmp_path / "cache"
    target = cached_path(card, cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * 10)
    with pytest.raises(WeightsError) as info:
        resolve_weights(card, registry_dir, cache=cache, allow_download=False)
    message = info.value.message
    assert f"the bundled {registry_dir / card.file} does not match" in message
    assert f"the cached {target} does not match" in message and "was deleted" in message
    assert not target.exists()


def test_cache_dir_follows_kdseg_cache_and_the_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("KDSEG_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("KDSEG_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "platform", "linux")
    assert cache_dir() == tmp_path / "home" / ".cache" / "kdsegmentation"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "kdsegmentation"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cache_dir() == tmp_path / "home" / "Library" / "Caches" / "kdsegmentation"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "AppData" / "Local"))
    assert cache_dir() == tmp_path / "AppData" / "Local" / "kdsegmentation" / "Cache"
