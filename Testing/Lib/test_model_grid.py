"""Physical-size model input on real CT with non-square fields of view: slices at a fixed mm per model pixel,
centred; resize mode equal to the Lib's edge-aligned resizing; exact output geometry through the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.imaging.image_files import read_image
from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.inference.model_grid import ModelGrid, axis_positions
from KDSegmentationLib.inference.pipeline import SegmentationOptions, Segmenter, classify_slices, segment_image
from KDSegmentationLib.inference.preprocessing import window_to_unit
from KDSegmentationLib.inference.slice_resampling import argmax_resized, resize_slices
from KDSegmentationLib.weights.model_registry import InputSpec, ModelCard, labels_from_anatomy


def _canonical(path):
    canonical = to_canonical(read_image(path))
    spacing = canonical.GetSpacing()
    return sitk.GetArrayFromImage(canonical), (spacing[1], spacing[0])


@pytest.fixture(scope="module")
def nifti(shared_data):  # 122 x 101 voxels of 3 mm: 366 x 303 mm
    return _canonical(shared_data / "ct" / "totalsegmentator_example" / "example_ct.nii.gz")


@pytest.fixture(scope="module")
def dicom(shared_data):  # 512 x 512 of 0.977 mm: 500 mm
    return _canonical(shared_data / "ct" / "totalsegmentator_dicom" / "example_ct_dicom")


def test_positions_centre_the_grid_and_resize_mode_is_edge_aligned():
    np.testing.assert_allclose(axis_positions(122, 3.0, 128, 3.0), np.arange(128) - 3.0)
    np.testing.assert_allclose(axis_positions(512, 500 / 512, 4, 500 / 4), (np.arange(4) + 0.5) * 128 - 0.5)


def test_same_spacing_copies_voxels_and_pads_with_air(nifti):
    hu, spacing_yx = nifti
    unit = window_to_unit(hu[60:62], (-125, 275))
    model = ModelGrid(128, 128, 3.0).to_model(unit, spacing_yx)
    assert model.shape == (2, 128, 128)
    # x: 122 voxels centred in 128 -> model column j is voxel j - 3; y: 101 voxels -> rows at half voxels.
    np.testing.assert_array_equal(model[:, :, :3], 0.0)
    np.testing.assert_array_equal(model[:, :, 125:], 0.0)
    rows = axis_positions(101, 3.0, 128, 3.0)
    inside = (rows >= 0) & (rows <= 100)
    lo = np.floor(rows[inside]).astype(int)
    expected = 0.5 * (unit[:, lo, :] + unit[:, np.minimum(lo + 1, 100), :])
    np.testing.assert_allclose(model[:, inside, 3:125], expected, atol=1e-6)


def test_organ_keeps_its_millimetre_size_across_fields_of_view(shared_data, dicom):
    """The DICOM series (500 mm field) on a 128 x 3 mm grid: a body section's area in model pixels times 9 mm^2
    is its area on the slice; in resize mode the same slice's area depends on the field of view."""
    hu, spacing_yx = dicom
    body = (hu[10:11] > -300).astype(np.float32)
    keep = np.abs(np.arange(512) - 255.5) * spacing_yx[0] < 180  # the central 360 mm, inside the 384 mm grid
    body[:, ~keep] = 0
    body[:, :, ~keep] = 0
    assert body.sum() > 0.3 * keep.sum() ** 2
    slice_mm2 = body.sum() * spacing_yx[0] * spacing_yx[1]
    physical = ModelGrid(128, 128, 3.0).to_model(body, spacing_yx) > 0.5
    assert physical.sum() * 9.0 == pytest.approx(slice_mm2, rel=0.03)
    resized = resize_slices(body, (128, 128)) > 0.5
    assert resized.sum() * 9.0 < 0.75 * slice_mm2  # 500 mm on 128 px: 3.9 mm pixels, the body looks smaller


def test_round_trip_restores_labels_where_the_grid_covers_and_background_elsewhere(shared_data, dicom):
    hu, spacing_yx = dicom
    grid = ModelGrid(128, 128, 3.0)
    bright = (hu[8:10] > -300).astype(np.int64)  # the body (and the table, partly outside the grid)
    model_labels = grid.labels_to_model(bright, spacing_yx)
    logits = np.stack([model_labels == 0, model_labels == 1], axis=1).astype(np.float32) * 8 - 4
    back = grid.argmax_to_slice(logits, bright.shape[1:], spacing_yx)
    rows = axis_positions(128, 3.0, 512, spacing_yx[0])
    covered_rows = (rows >= -0.5) & (rows <= 127.5)
    assert 0 < covered_rows.sum() < 512  # 384 mm of 500 mm
    assert not back[:, ~covered_rows].any()
    overlap = (back == 1) & (bright == 1)
    covered = bright[:, covered_rows][:, :, covered_rows] == 1
    dice = 2 * overlap.sum() / ((back == 1).sum() + covered.sum())
    assert dice > 0.97


def test_resize_mode_equals_the_lib_resizing(nifti):
    hu, spacing_yx = nifti
    unit = window_to_unit(hu[50:53], (-125, 275))
    grid = ModelGrid(64, 64)
    np.testing.assert_allclose(grid.to_model(unit, spacing_yx), resize_slices(unit, (64, 64)), atol=1e-6)
    logits = np.random.default_rng(0).normal(size=(3, 9, 64, 64)).astype(np.float32)
    smooth = resize_slices(resize_slices(logits, (8, 8)), (64, 64))
    np.testing.assert_array_equal(grid.argmax_to_slice(smooth, unit.shape[1:], spacing_yx),
                                  argmax_resized(smooth, unit.shape[1:]))


def test_invalid_grids_are_refused():
    with pytest.raises(ValueError, match="pixel_spacing_mm must be positive"):
        ModelGrid(128, 128, 0.0)
    with pytest.raises(ValueError, match="slice pixel spacing must be positive"):
        ModelGrid(128, 128, 3.0).to_model(np.zeros((1, 4, 4), np.float32), (0.0, 1.0))


class _BrightEngine:
    """Class 1 where the windowed model input is above 0.3 (-5 HU: soft tissue, organs, bone), else background."""

    device = "cpu"

    def __init__(self, size):
        self.input_shape = (1, size, size)

    def run(self, batch):
        x = batch[:, 0]
        scores = np.zeros((x.shape[0], 9) + x.shape[1:], np.float32)
        scores[:, 1] = (x - 0.3) * 10
        return scores


def _physical_segmenter(size=128, spacing=3.0):
    card = ModelCard(id="physical-test", title="t", version="0", description="d", architecture="a",
                     file="x.onnx", size_bytes=1, sha256="0" * 64, urls=("x.onnx",),
                     input=InputSpec(1, size, size, (-125.0, 275.0), pixel_spacing_mm=spacing),
                     labels=labels_from_anatomy(), license="Apache-2.0", intended_use="tests")
    return Segmenter(card, _BrightEngine(size))


@pytest.mark.parametrize("case", ["totalsegmentator_example/example_ct.nii.gz", "totalsegmentator_dicom/example_ct_dicom",
                                  "dcmqi_3slice/ct-3slice"])
def test_pipeline_physical_mode_keeps_geometry_and_places_anatomy_in_mm(shared_data, case):
    image = read_image(shared_data / "ct" / case)
    if image.GetSize()[2] > 12:  # a band of slices keeps the test fast
        image = image[:, :, image.GetSize()[2] // 2 - 4:image.GetSize()[2] // 2 + 4]
    result = segment_image(image, _physical_segmenter(), SegmentationOptions(postprocess=False))
    labels = result.labels
    assert labels.GetSize() == image.GetSize()
    assert labels.GetSpacing() == image.GetSpacing() and labels.GetOrigin() == image.GetOrigin()
    assert labels.GetDirection() == image.GetDirection()
    # The label map marks the input's own soft tissue (where the 384 mm grid covers the slice), voxel for voxel
    # up to the 3 mm resolution of the model grid.
    predicted = sitk.GetArrayFromImage(labels) == 1
    tissue = window_to_unit(sitk.GetArrayFromImage(image), (-125, 275)) > 0.3
    overlap = (predicted & tissue).sum()
    assert overlap / predicted.sum() > 0.9 and overlap / tissue.sum() > 0.8


def test_classify_slices_needs_the_spacing_of_a_physical_model(dicom):
    hu, spacing_yx = dicom
    segmenter = _physical_segmenter()
    with pytest.raises(ValueError, match="spacing_yx"):
        classify_slices(hu[:1], segmenter)
    assert classify_slices(hu[:1], segmenter, spacing_yx=spacing_yx).shape == (1, 512, 512)
