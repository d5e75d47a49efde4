"""The model grid's fast paths (class maps back to the slice, slices onto the grid) against the direct way."""

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.imaging.image_files import read_image
from KDSegmentationLib.imaging.orientation import CanonicalAxes, to_canonical
from KDSegmentationLib.inference.label_extents import LabelExtents
from KDSegmentationLib.inference.model_grid import ModelGrid, argmax_sampled, sample_slices
from KDSegmentationLib.inference.preprocessing import window_to_unit
from KDSegmentationLib.inference.slice_resampling import resize_slices


@pytest.fixture(scope="module")
def dicom_slices(shared_data):
    """Eight windowed 512 x 512 canonical slices of the real DICOM CT (0.977 mm pixels)."""
    image = read_image(shared_data / "ct" / "totalsegmentator_dicom" / "example_ct_dicom")
    axes = CanonicalAxes(image)
    hu = axes.view(sitk.GetArrayViewFromImage(image))[6:14]
    return window_to_unit(hu, (-125, 275)), (axes.spacing[1], axes.spacing[0])


@pytest.mark.parametrize("mm", [None, 1.5, 3.0, 4.5], ids=["resize", "1.5 mm", "3 mm (crop)", "4.5 mm (pad)"])
def test_to_model_fast_equals_blur_then_sample_on_real_ct(dicom_slices, mm):
    slices, spacing_yx = dicom_slices
    grid = ModelGrid(128, 128, mm)
    reference = grid.to_model(slices, spacing_yx)
    fast = grid.to_model_fast(slices, spacing_yx)
    assert fast.shape == reference.shape == (8, 128, 128) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, reference, atol=2e-6)
    np.testing.assert_allclose(grid.to_model_fast(slices, spacing_yx, fill=0.25),
                               grid.to_model(slices, spacing_yx, fill=0.25), atol=2e-6)


@pytest.mark.parametrize("mm", [None, 3.0], ids=["resize", "3 mm"])
def test_banded_operator_gives_the_tap_by_tap_sum_bit_for_bit_in_any_layout(dicom_slices, mm):
    """The slice-by-slice, transposed-columns evaluation rounds exactly as the plain sum of weighted taps (in tap
    order) over the whole batch, so the pipeline's model input does not change with the layout."""
    from KDSegmentationLib.inference.model_grid import _apply_banded, _input_operators

    slices, spacing_yx = dicom_slices
    _, _, rows, cols = _input_operators(ModelGrid(128, 128, mm), 512, 512, *spacing_yx)

    def tap_by_tap(array, axis, indices, weights):
        shape = [1] * array.ndim
        shape[axis] = indices.shape[0]
        out = np.take(array, indices[:, 0], axis=axis) * weights[:, 0].reshape(shape)
        for t in range(1, indices.shape[1]):
            out += np.take(array, indices[:, t], axis=axis) * weights[:, t].reshape(shape)
        return out

    along_rows = _apply_banded(slices, -2, *rows)
    np.testing.assert_array_equal(along_rows, tap_by_tap(slices, -2, *rows))
    np.testing.assert_array_equal(_apply_banded(along_rows, -1, *cols), tap_by_tap(along_rows, -1, *cols))
    np.testing.assert_array_equal(_apply_banded(slices[0], -2, *rows), along_rows[0])  # one slice (live preview)


@pytest.fixture(scope="module")
def organ_scores(shared_data):
    """Organ-shaped class scores on a 64 x 64 grid from the real reference segmentation (all eight organs)."""
    seg = sitk.GetArrayFromImage(to_canonical(sitk.ReadImage(
        str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))))[84:92]
    organ_ids = [52, 4, 3, 2, 5, 7, 1, 6]
    onehot = np.stack([~np.isin(seg, organ_ids)] + [seg == i for i in organ_ids], axis=1).astype(np.float32)
    return 8 * resize_slices(onehot, (64, 64)) - 4


@pytest.mark.parametrize("mm", [None, 2.0, 9.0], ids=["resize", "2 mm (grid inside the slice)", "9 mm (padded)"])
def test_argmax_sampled_equals_argmax_of_sampled_maps(organ_scores, mm):
    grid = ModelGrid(64, 64, mm)
    noise = np.random.default_rng(1).normal(size=organ_scores.shape).astype(np.float32)
    for scores in (organ_scores, noise):
        taps_y, taps_x = grid.output_taps((300, 260), (0.8, 0.9))
        expected = sample_slices(scores, taps_y, taps_x).argmax(axis=1)
        outside = ~(taps_y.inside[:, None] & taps_x.inside[None, :])
        expected[:, outside] = 0
        labels = np.full((10, 300, 260), 255, np.uint8)
        extents = LabelExtents(labels.shape)
        result = grid.argmax_to_slice(scores, (300, 260), (0.8, 0.9), out=labels[1:9], extents=extents, first_slice=1)
        np.testing.assert_array_equal(result, expected)
        for value in range(9):
            inside = np.zeros(labels.shape, bool)
            box = extents.box(value, margin=0)
            if box is not None:
                inside[box] = True
            assert not ((labels == value) & ~inside).any(), value
    tiny = ModelGrid(4, 4, mm)  # ties go to the lower class, as with argmax
    assert (argmax_sampled(np.zeros((1, 3, 4, 4), np.float32), *tiny.output_taps((8, 8), (1.0, 1.0))) == 0).all()
