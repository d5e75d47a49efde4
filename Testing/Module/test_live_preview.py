"""The module's live-preview path without Slicer, on the real sample CT with the bundled model."""

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.imaging.slice_under_view import ViewState
from KDSegmentationLib.imaging.slicer_geometry import ijk_to_ras_from_image
from KDSegmentationLib.inference.pipeline import SegmentationOptions, Segmenter, segment_image
from KDSegmentationLib.resources import sample_ct_path
from KDSegmentationLib.slicer_support import live_preview as live_preview_module
from KDSegmentationLib.slicer_support.latest_request import LatestRequestWorker, RequestFinished
from KDSegmentationLib.slicer_support.live_preview import (
    LivePreview,
    PreviewInput,
    ViewRequest,
    registry_segmenter_factory,
    same_view,
)
from KDSegmentationLib.slicer_support.run_settings import run_settings
from KDSegmentationLib.weights.model_registry import load_registry


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def sample():
    """The sample CT as the module copies it from Slicer: (K, J, I) array and IJK-to-RAS."""
    image = sitk.ReadImage(str(sample_ct_path()))
    return image, PreviewInput("vtkMRMLScalarVolumeNode1@1", sitk.GetArrayFromImage(image),
                               ijk_to_ras_from_image(image))


class CountingFactory:
    def __init__(self, registry):
        self.opened = []
        self._open = registry_segmenter_factory(registry)

    def __call__(self, settings):
        self.opened.append(settings)
        return self._open(settings)


def _axial_view_at(ijk_to_ras, z):
    """Slicer's default axial SliceToRAS centred on canonical slice z."""
    view = np.diag([-1.0, 1.0, 1.0, 1.0])
    view[:3, 3] = (ijk_to_ras @ np.array([50.0, 40.0, z, 1.0]))[:3]
    return view


def test_previews_follow_the_view_with_one_warm_session_and_one_prepared_volume(registry, sample, monkeypatch):
    image, volume = sample
    canonical = to_canonical(image)
    canonical_ijk_to_ras = ijk_to_ras_from_image(canonical)
    settings, _ = run_settings(registry, device="cpu", threads=1)
    factory = CountingFactory(registry)
    prepared = []
    original = live_preview_module.PreviewVolume.from_kji_array
    monkeypatch.setattr(live_preview_module.PreviewVolume, "from_kji_array",
                        lambda *args: prepared.append(1) or original(*args))
    preview = LivePreview(factory)
    full = sitk.GetArrayFromImage(segment_image(  # the sample's K axis is its axial axis, inferior first
        image, Segmenter.from_registry(device="cpu", registry=registry), SegmentationOptions(postprocess=False)
    ).labels)
    for z in (20, 60, 61, 100):
        outcome = preview(ViewRequest(settings, volume, _axial_view_at(canonical_ijk_to_ras, z), np.eye(4)))
        assert outcome.view.state is ViewState.AXIAL and outcome.view.index == z
        np.testing.assert_array_equal(outcome.preview.labels[0], full[z])
        assert (outcome.preview.input_axis, outcome.preview.input_index) == (0, z)
        assert outcome.card.id == settings.model_id
    assert len(factory.opened) == 1 and len(prepared) == 1

    # Structures change the shown labels, not the session; device or threads reopen it.
    spleen_only, _ = run_settings(registry, device="cpu", structures="spleen", threads=1)
    outcome = preview(ViewRequest(spleen_only, volume, _axial_view_at(canonical_ijk_to_ras, 60), np.eye(4)))
    np.testing.assert_array_equal(outcome.preview.labels[0], np.where(full[60] == 7, 7, 0))
    assert len(factory.opened) == 1
    two_threads, _ = run_settings(registry, device="cpu", threads=2)
    preview(ViewRequest(two_threads, volume, _axial_view_at(canonical_ijk_to_ras, 60), np.eye(4)))
    assert len(factory.opened) == 2

    # Another volume (or the same one edited: a new key) is prepared again.
    moved = PreviewInput("vtkMRMLScalarVolumeNode1@2", volume.array_kji, volume.ijk_to_ras)
    preview(ViewRequest(two_threads, moved, _axial_view_at(canonical_ijk_to_ras, 60), np.eye(4)))
    assert len(prepared) == 2


def test_views_without_an_axial_slice_get_a_hint_and_no_inference(registry, sample):
    image, volume = sample
    canonical_ijk_to_ras = ijk_to_ras_from_image(to_canonical(image))
    settings, _ = run_settings(registry, device="cpu", threads=1)
    preview = LivePreview(registry_segmenter_factory(registry))
    coronal = np.array([[-1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    coronal[:3, 3] = _axial_view_at(canonical_ijk_to_ras, 50)[:3, 3]
    cases = {ViewState.NOT_AXIAL: (coronal, np.eye(4)),
             ViewState.OUTSIDE: (_axial_view_at(canonical_ijk_to_ras, 200), np.eye(4)),
             ViewState.NONLINEAR_TRANSFORM: (_axial_view_at(canonical_ijk_to_ras, 50), None)}
    for state, (view, parent) in cases.items():
        outcome = preview(ViewRequest(settings, volume, view, parent))
        assert outcome.view.state is state and outcome.preview is None
        assert "infer" not in outcome.timings


def test_scrolling_through_the_worker_computes_only_the_newest_view(registry, sample):
    image, volume = sample
    canonical_ijk_to_ras = ijk_to_ras_from_image(to_canonical(image))
    settings, _ = run_settings(registry, device="cpu", threads=1)
    computed = []
    preview = LivePreview(registry_segmenter_factory(registry))

    def work(request):
        computed.append(request)
        return preview(request)

    worker = LatestRequestWorker(work)
    try:
        requests = [ViewRequest(settings, volume, _axial_view_at(canonical_ijk_to_ras, z), np.eye(4))
                    for z in range(10, 90)]
        for request in requests:  # a fast scroll: submitted far faster than slices are segmented
            worker.submit(request)
        assert worker.wait_idle(60)
        outcome = worker.poll()
        assert isinstance(outcome, RequestFinished) and outcome.request is requests[-1]
        assert outcome.result.view.index == 89
        assert computed[-1] is requests[-1] and len(computed) < len(requests) / 2
        assert worker.poll() is None
    finally:
        assert worker.close(timeout=10)


def test_moving_within_a_slice_reuses_it_and_none_releases_the_volume(registry, sample, monkeypatch):
    image, volume = sample
    canonical_ijk_to_ras = ijk_to_ras_from_image(to_canonical(image))
    settings, _ = run_settings(registry, device="cpu", threads=1)
    prepared = []
    original = live_preview_module.PreviewVolume.from_kji_array
    monkeypatch.setattr(live_preview_module.PreviewVolume, "from_kji_array",
                        lambda *args: prepared.append(1) or original(*args))
    preview = LivePreview(registry_segmenter_factory(registry))
    first = preview(ViewRequest(settings, volume, _axial_view_at(canonical_ijk_to_ras, 30), np.eye(4)))
    nudged = _axial_view_at(canonical_ijk_to_ras, 30.3)  # a third of a slice further: still slice 30
    nudged[:3, 3] += (7.0, -3.0, 0.0)  # and panned
    second = preview(ViewRequest(settings, volume, nudged, np.eye(4)))
    assert second.preview is first.preview and "infer" in first.timings and "infer" not in second.timings
    assert preview(None) is None
    third = preview(ViewRequest(settings, volume, nudged, np.eye(4)))
    assert len(prepared) == 2, "after a release the volume is prepared again"
    np.testing.assert_array_equal(third.preview.labels, first.preview.labels)


def test_same_view_ignores_nothing_that_moves_the_view(registry, sample):
    image, volume = sample
    settings, _ = run_settings(registry, device="cpu", threads=1)
    view = _axial_view_at(ijk_to_ras_from_image(image), 10)
    request = ViewRequest(settings, volume, view, np.eye(4))
    assert same_view(request, ViewRequest(settings, volume, view.copy(), np.eye(4)))
    assert same_view(None, None) and not same_view(request, None)
    moved = view.copy()
    moved[2, 3] += 1e-6
    assert not same_view(request, ViewRequest(settings, volume, moved, np.eye(4)))
    assert not same_view(request, ViewRequest(settings, volume, view, None))
    shifted = np.eye(4)
    shifted[0, 3] = 1.0
    assert not same_view(request, ViewRequest(settings, volume, view, shifted))
    other_settings, _ = run_settings(registry, device="cpu", threads=1, structures="liver")
    assert not same_view(request, ViewRequest(other_settings, volume, view, np.eye(4)))
    edited = PreviewInput("vtkMRMLScalarVolumeNode1@2", volume.array_kji, volume.ijk_to_ras)
    assert not same_view(request, ViewRequest(settings, edited, view, np.eye(4)))
