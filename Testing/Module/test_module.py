"""The Slicer module's logic path without Slicer, on real CT: geometry, terminology, worker thread, cancel."""

import time

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.slicer_support.background_task import BackgroundTask, TaskFailed, TaskFinished
from KDSegmentationLib.inference.pipeline import SegmentationOptions, Segmenter
from KDSegmentationLib.progress import ProgressEvent, Stage
from KDSegmentationLib.weights.model_registry import labels_from_anatomy, load_registry
from KDSegmentationLib.slicer_support.run_settings import gui_inference_threads, run_settings
from KDSegmentationLib.slicer_support.terminology import parse_terminology_entry, terminology_entry
from KDSegmentationLib.imaging.slicer_geometry import ijk_to_ras_from_image, image_from_kji_array
from KDSegmentationLib.slicer_support.status_text import format_timings
from KDSegmentationLib.slicer_support.module_segmentation import segment_volume_array


def _oblique(image):
    angle = np.deg2rad(12)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilted = sitk.Image(image)
    tilted.SetDirection(tuple((rotation @ np.array(image.GetDirection()).reshape(3, 3)).ravel()))
    return tilted


def test_kji_array_and_ijk_to_ras_round_trip_exactly(example_ct):
    for image in (example_ct, sitk.Flip(example_ct, [False, True, True]), _oblique(example_ct)):
        matrix = ijk_to_ras_from_image(image)
        # RAS is LPS with x and y negated: the first voxel's RAS position.
        origin = np.array(image.GetOrigin())
        np.testing.assert_allclose(matrix[:3, 3], origin * [-1, -1, 1])
        rebuilt = image_from_kji_array(sitk.GetArrayFromImage(image), matrix)
        np.testing.assert_allclose(rebuilt.GetOrigin(), image.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(rebuilt.GetSpacing(), image.GetSpacing(), atol=1e-9)
        np.testing.assert_allclose(rebuilt.GetDirection(), image.GetDirection(), atol=1e-12)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(rebuilt), sitk.GetArrayFromImage(image))
    with pytest.raises(ValueError, match="3D"):
        image_from_kji_array(np.zeros((4, 4)), np.eye(4))


def test_terminology_entries_follow_slicers_format():
    labels = labels_from_anatomy()
    assert terminology_entry(labels[0]) is None
    left = terminology_entry(next(label for label in labels if label.name == "kidney_left"))
    assert left == ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical "
                    "Structure~SCT^64033007^Kidney~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")
    for label in labels[1:]:
        fields = parse_terminology_entry(terminology_entry(label))
        assert fields["type"][0] == "SCT" and fields["category"][1] == "123037004"
    with pytest.raises(ValueError, match="7"):
        parse_terminology_entry("a~b")


def test_module_logic_path_on_real_ct(example_ct, plumbing_segmenter):
    array = sitk.GetArrayFromImage(example_ct)
    matrix = ijk_to_ras_from_image(example_ct)
    result = segment_volume_array(array, matrix, plumbing_segmenter,
                                  SegmentationOptions(structures=["liver", "spleen", "kidney_left"]))
    assert result.labels_kji.shape == array.shape and result.labels_kji.dtype == np.uint8
    np.testing.assert_allclose(result.ijk_to_ras, matrix, atol=1e-9)
    assert [s.name for s in result.segments] == ["Left kidney", "Liver", "Spleen"]
    assert [s.label_value for s in result.segments] == [3, 5, 7]
    assert all(0 <= c <= 1 for s in result.segments for c in s.color)
    assert set(np.unique(result.labels_kji)) <= {0, 3, 5, 7}
    assert "SCT^10200004^Liver" in result.segments[1].terminology
    assert result.display_names == {"kidney_left": "Left kidney", "liver": "Liver", "spleen": "Spleen"}
    assert set(result.volumes_ml) == set(result.display_names)
    assert (result.model_id, result.model_title, result.device) == ("plumbing", "Plumbing model",
                                                                    "cpu")
    assert format_timings(result.timings, result.device).startswith("Done in ")


def test_module_work_path_from_parameter_strings_on_a_thread(example_ct, plumbing_registry):
    """What KDSegmentationLogic.startTask runs: settings from the parameter node's strings, the
    registry, weights resolution, engine and segmentation, all on a worker thread."""
    registry = load_registry(plumbing_registry)
    settings, card = run_settings(registry, "", "cpu", "Liver,spleen", True, 16, threads=gui_inference_threads())
    # A Slicer volume of the real CT: KJI array and IJK-to-RAS, with a flipped axis as Slicer often has.
    flipped = sitk.Flip(example_ct, [True, False, False])
    array, matrix = sitk.GetArrayFromImage(flipped), ijk_to_ras_from_image(flipped)

    def work(progress, cancel):
        segmenter = Segmenter.from_registry(settings.model_id, device=settings.device, threads=settings.threads,
                                            registry=registry, progress=progress, cancel=cancel)
        options = SegmentationOptions(structures=settings.structures, postprocess=settings.postprocess,
                                      batch_size=settings.batch_size)
        return segment_volume_array(array, matrix, segmenter, options, progress, cancel)

    task = BackgroundTask(work)
    task.start()
    assert task.wait(120)
    messages = task.poll()
    assert Stage.LOADING in {m.stage for m in messages if isinstance(m, ProgressEvent)}
    result = messages[-1].result
    assert [spec.name for spec in result.segments] == ["Liver", "Spleen"]
    # Labels come back on the Slicer grid: un-flipping them gives the labels of the unflipped CT.
    direct = segment_volume_array(sitk.GetArrayFromImage(example_ct), ijk_to_ras_from_image(example_ct),
                                  Segmenter.from_registry(registry=registry, device="cpu"),
                                  SegmentationOptions(structures=["liver", "spleen"]))
    np.testing.assert_array_equal(result.labels_kji[:, :, ::-1], direct.labels_kji)
    np.testing.assert_allclose(result.ijk_to_ras, matrix, atol=1e-9)


def test_background_task_reports_progress_and_result(example_ct, plumbing_segmenter):
    array, matrix = sitk.GetArrayFromImage(example_ct), ijk_to_ras_from_image(example_ct)
    task = BackgroundTask(lambda progress, cancel: segment_volume_array(
        array, matrix, plumbing_segmenter, SegmentationOptions(batch_size=16), progress, cancel))
    task.start()
    assert task.wait(120)
    messages = task.poll()
    stages = {m.stage for m in messages if isinstance(m, ProgressEvent)}
    assert {Stage.PREPROCESSING, Stage.INFERRING, Stage.POSTPROCESSING} <= stages
    assert isinstance(messages[-1], TaskFinished)
    assert messages[-1].result.labels_kji.shape == array.shape
    assert not task.running


def test_cancel_stops_promptly_and_returns_no_result(example_ct, plumbing_segmenter):
    array, matrix = sitk.GetArrayFromImage(example_ct), ijk_to_ras_from_image(example_ct)
    started = []

    def work(progress, cancel):
        def forward(event):
            started.append(event)
            progress(event)
        return segment_volume_array(array, matrix, plumbing_segmenter, SegmentationOptions(batch_size=1),
                                    forward, cancel)

    task = BackgroundTask(work)
    task.start()
    while not any(e.stage == Stage.INFERRING for e in started):
        time.sleep(0.01)
    clicked = time.monotonic()
    task.cancel()
    assert task.wait(10)
    assert time.monotonic() - clicked < 1.0
    final = task.poll()[-1]
    assert isinstance(final, TaskFailed) and final.cancelled
