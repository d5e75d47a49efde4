"""segment_image / segment_file behaviour with the real (untrained) ONNX graph on real CT.

The untrained model's labels are meaningless (it predicts one class nearly
everywhere), so tests about structure subsets and post-processing also use a
deterministic "intensity band" engine that labels each windowed intensity band
with its own class: on real CT that gives all nine classes in many components.
These tests check what the pipeline guarantees whatever the weights: batching,
structure subsets, volumes, progress, cancellation, errors and files.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.errors import CancelledError, InputImageError, ModelNotFoundError, RegistryError
from KDSegmentationLib.inference.pipeline import (SegmentationOptions, Segmenter, segment_file, segment_image,
                                        structure_label_values)
from KDSegmentationLib.progress import CancelToken, Stage


class IntensityBandEngine:
    """Scores -(8x - c)^2 for windowed intensity x in [0, 1]: class c wins in the c-th band."""

    device = "cpu"

    def run(self, batch):
        x = batch[:, 0] * 8.0
        return np.stack([-(x - c) ** 2 for c in range(9)], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def band_segmenter(plumbing_segmenter):
    return Segmenter(plumbing_segmenter.card, IntensityBandEngine())


@pytest.fixture(scope="module")
def small_ct(shared_data):
    """24 real slices: enough for several batches, quick on the plumbing graph."""
    image = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_ct.nii.gz"))
    return image[:, :, 44:68]


@pytest.mark.parametrize("segmenter_name", ["plumbing_segmenter", "band_segmenter"])
def test_batch_size_does_not_change_the_result(small_ct, segmenter_name, request):
    segmenter = request.getfixturevalue(segmenter_name)
    results = [segment_image(small_ct, segmenter, SegmentationOptions(postprocess=False, batch_size=b))
               for b in (1, 5, 64)]
    arrays = [sitk.GetArrayFromImage(r.labels) for r in results]
    for other in arrays[1:]:
        np.testing.assert_array_equal(other, arrays[0])
    assert set(results[0].timings) == {"preprocess", "infer", "postprocess"}
    assert results[0].model_id == "plumbing" and results[0].device == "cpu"


def test_band_engine_gives_every_class_on_real_ct(small_ct, band_segmenter):
    labels = sitk.GetArrayFromImage(segment_image(small_ct, band_segmenter,
                                                  SegmentationOptions(postprocess=False)).labels)
    assert set(np.unique(labels)) == set(range(9))


def test_structure_subset_keeps_exactly_those_labels_of_the_full_run(small_ct, band_segmenter):
    full = segment_image(small_ct, band_segmenter, SegmentationOptions(postprocess=False))
    subset = segment_image(small_ct, band_segmenter,
                           SegmentationOptions(structures=["Liver", "stomach", "gallbladder"], postprocess=False))
    full_labels = sitk.GetArrayFromImage(full.labels)
    subset_labels = sitk.GetArrayFromImage(subset.labels)
    expected = np.where(np.isin(full_labels, [2, 5, 8]), full_labels, 0)
    np.testing.assert_array_equal(subset_labels, expected)
    assert list(subset.volumes_ml) == ["gallbladder", "liver", "stomach"]
    voxel_ml = np.prod(small_ct.GetSpacing()) / 1000
    for name, index in (("gallbladder", 2), ("liver", 5), ("stomach", 8)):
        assert subset.volumes_ml[name] == pytest.approx((subset_labels == index).sum() * voxel_ml)
    assert subset.volumes_ml == {k: full.volumes_ml[k] for k in subset.volumes_ml}


def _components(labels, value):
    components = sitk.ConnectedComponent(labels == value, True)
    return int(sitk.GetArrayFromImage(components).max())


def test_postprocessing_leaves_one_component_per_organ(small_ct, band_segmenter):
    raw = segment_image(small_ct, band_segmenter, SegmentationOptions(postprocess=False))
    clean = segment_image(small_ct, band_segmenter, SegmentationOptions(postprocess=True))
    assert max(_components(raw.labels, v) for v in range(1, 9)) > 1  # there was something to clean
    for value in range(1, 9):
        assert _components(clean.labels, value) == 1, value
        # Each organ keeps its largest raw component (and may gain filled holes).
        raw_sizes = sitk.LabelShapeStatisticsImageFilter()
        raw_sizes.Execute(sitk.ConnectedComponent(raw.labels == value, True))
        largest = max(raw_sizes.GetNumberOfPixels(i) for i in raw_sizes.GetLabels())
        assert (sitk.GetArrayViewFromImage(clean.labels) == value).sum() >= largest


def test_progress_reports_stages_and_slices_in_order(small_ct, plumbing_segmenter):
    events = []
    segment_image(small_ct, plumbing_segmenter, SegmentationOptions(batch_size=10), progress=events.append)
    stages = [e.stage for e in events]
    order = [Stage.PREPROCESSING, Stage.INFERRING, Stage.POSTPROCESSING, Stage.DONE]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == order
    inferring = [e for e in events if e.stage == Stage.INFERRING]
    assert [e.current for e in inferring] == [0, 10, 20, 24] and all(e.total == 24 for e in inferring)
    assert inferring[-1].message == "slice 24 of 24"


def test_cancel_between_batches_raises_and_stops_inference(small_ct, plumbing_segmenter, monkeypatch):
    token = None
    runs = []
    real_run = plumbing_segmenter.engine.run
    monkeypatch.setattr(plumbing_segmenter.engine, "run", lambda batch: runs.append(1) or real_run(batch))

    def cancel_after_first_batch(event):
        if event.stage == Stage.INFERRING and event.current >= 4:
            token.cancel()

    # Overlapped: the batches already submitted to the concurrent calls may run too.
    for overlap, most in ((False, 1), (True, 1 + plumbing_segmenter.concurrent_runs)):
        runs.clear()
        token = CancelToken()
        with pytest.raises(CancelledError):
            segment_image(small_ct, plumbing_segmenter, SegmentationOptions(batch_size=4, overlap_network=overlap),
                          progress=cancel_after_first_batch, cancel=token)
        assert 1 <= len(runs) <= most


def test_bad_options_and_inputs(small_ct, plumbing_segmenter):
    with pytest.raises(ModelNotFoundError, match="heart") as info:
        segment_image(small_ct, plumbing_segmenter, SegmentationOptions(structures=["heart"]))
    assert "liver" in info.value.hint
    with pytest.raises(ValueError, match="not a string"):
        SegmentationOptions(structures="liver")
    with pytest.raises(ValueError, match="batch_size"):
        SegmentationOptions(batch_size=0)
    with pytest.raises(InputImageError, match="2D image"):
        segment_image(small_ct[:, :, 3], plumbing_segmenter)
    with pytest.raises(InputImageError, match="components per voxel"):
        segment_image(sitk.Compose([small_ct, small_ct]), plumbing_segmenter)
    nan = sitk.Cast(small_ct, sitk.sitkFloat32)
    nan[10, 10, 3] = float("nan")
    with pytest.raises(InputImageError, match="NaN"):
        segment_image(nan, plumbing_segmenter)
    assert structure_label_values(plumbing_segmenter.card, None) == list(range(1, 9))


def test_model_card_and_graph_mismatches_are_reported(small_ct, plumbing_segmenter):
    from dataclasses import replace

    card = plumbing_segmenter.card
    with pytest.raises(RegistryError, match="normalization"):
        Segmenter(replace(card, input=replace(card.input, normalization="zscore")), plumbing_segmenter.engine)
    with pytest.raises(RegistryError, match="3-channel"):
        Segmenter(replace(card, input=replace(card.input, channels=3)), plumbing_segmenter.engine)
    size = card.input.height
    with pytest.raises(RegistryError, match=f"card says input height {size + 32}, but the ONNX file takes {size}"):
        Segmenter(replace(card, input=replace(card.input, height=size + 32, width=size + 32)),
                  plumbing_segmenter.engine)
    # A card claiming fewer classes than the graph outputs.
    wrong = Segmenter(replace(card, labels=card.labels[:4]), plumbing_segmenter.engine)
    with pytest.raises(RegistryError, match="does not match the ONNX file"):
        segment_image(small_ct, wrong)


def test_segment_file_writes_atomically_and_times_every_stage(small_ct, plumbing_segmenter, tmp_path):
    source = tmp_path / "ct.nrrd"
    sitk.WriteImage(small_ct, str(source))
    out = tmp_path / "seg.nii.gz"
    result = segment_file(source, out, plumbing_segmenter)
    assert list(result.timings) == ["read", "preprocess", "infer", "postprocess", "write"]
    written = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(result.labels))
    assert written.GetDirection() == small_ct.GetDirection() and written.GetSize() == small_ct.GetSize()
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        segment_file(source, tmp_path / "cancelled.nii.gz", plumbing_segmenter, cancel=token)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd", "seg.nii.gz"]


def test_segmentation_runs_in_a_worker_thread(small_ct, plumbing_segmenter):
    """As in Slicer: the pipeline is called from a thread and shares no global state."""
    from concurrent.futures import ThreadPoolExecutor

    options = SegmentationOptions(postprocess=False)
    expected = sitk.GetArrayFromImage(segment_image(small_ct, plumbing_segmenter, options).labels)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(segment_image, small_ct, plumbing_segmenter, options) for _ in range(2)]
        for future in futures:
            np.testing.assert_array_equal(sitk.GetArrayFromImage(future.result().labels), expected)
