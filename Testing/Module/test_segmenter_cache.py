"""The module reuses its ONNX Runtime session while model, weights, device and threads are unchanged."""

from KDSegmentationLib.inference.pipeline import Segmenter
from KDSegmentationLib.slicer_support.segmenter_cache import SegmenterCache
from KDSegmentationLib.weights.model_registry import load_registry


def test_same_settings_reuse_the_session_and_changes_open_a_new_one(plumbing_registry):
    registry = load_registry(plumbing_registry)
    opened = []

    def factory(*args, **kwargs):
        segmenter = Segmenter.from_registry(*args, **kwargs)
        opened.append(segmenter)
        return segmenter

    cache = SegmenterCache(factory)
    first = cache.get(registry, None, "cpu", 1)
    assert cache.get(registry, registry.default_model_id, "cpu", 1) is first  # same model named explicitly
    assert first.engine.device == "cpu" and len(opened) == 1
    two_threads = cache.get(registry, None, "cpu", 2)
    assert two_threads is not first and len(opened) == 2
    auto = cache.get(registry, None, "auto", 2)
    assert auto is not two_threads and len(opened) == 3
    assert cache.get(registry, None, "auto", 2) is auto
    cache.clear()
    assert cache.get(registry, None, "auto", 2) is not auto and len(opened) == 4
