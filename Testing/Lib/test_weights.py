"""Weight resolution order (bundled -> cache -> download) and offline errors."""

import hashlib
import json
import shutil

import pytest

from KDSegmentationLib.errors import WeightsError
from KDSegmentationLib.registry import load_registry
from KDSegmentationLib.weights import cached_path, is_available_offline, resolve_weights


def test_bundled_file_is_used(plumbing_registry, tmp_path):
    registry = load_registry(plumbing_registry)
    card = registry.get()
    path = resolve_weights(card, registry.directory, cache=tmp_path / "cache", allow_download=False)
    assert path == registry.directory / card.file
    assert is_available_offline(card, registry.directory, tmp_path / "cache")


def test_missing_bundle_downloads_into_cache_then_works_offline(plumbing_registry, tmp_path):
    registry = load_registry(plumbing_registry)
    card = registry.get()
    store = tmp_path / "store"
    store.mkdir()
    shutil.move(str(registry.directory / card.file), store / card.file)
    data = json.loads(plumbing_registry.read_text(encoding="utf-8"))
    data["models"][0]["urls"] = [(store / card.file).as_uri()]
    plumbing_registry.write_text(json.dumps(data), encoding="utf-8")
    registry = load_registry(plumbing_registry)
    card = registry.get()
    cache = tmp_path / "cache"
    assert not is_available_offline(card, registry.directory, cache)
    with pytest.raises(WeightsError) as info:
        resolve_weights(card, registry.directory, cache=cache, allow_download=False)
    message = str(info.value)
    assert str(cached_path(card, cache)) in message and card.sha256 in message and "file://" in message
    path = resolve_weights(card, registry.directory, cache=cache)
    assert path == cached_path(card, cache)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card.sha256
    (store / card.file).unlink()
    assert resolve_weights(card, registry.directory, cache=cache, allow_download=False) == path


def test_corrupt_cache_entry_is_replaced(plumbing_registry, tmp_path):
    registry = load_registry(plumbing_registry)
    card = registry.get()
    source = registry.directory / card.file
    data = json.loads(plumbing_registry.read_text(encoding="utf-8"))
    data["models"][0]["urls"] = [source.as_uri()]
    data["models"][0]["file"] = "elsewhere.onnx"
    plumbing_registry.write_text(json.dumps(data), encoding="utf-8")
    card = load_registry(plumbing_registry).get()
    cache = tmp_path / "cache"
    target = cached_path(card, cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * card.size_bytes)  # right size, wrong content
    path = resolve_weights(card, registry.directory, cache=cache)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card.sha256
