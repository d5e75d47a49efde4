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
def test_banded_operator_is_its_matrix_in_small_single_thread_products(dicom_slices, mm):
    """Each axis's blocks cover exactly the non-zero rows of its matrix, every product stays below OpenBLAS's
    multi-thread size, and the blocked products give the dense product up to float32 rounding, in either
    storage order of the input axis."""
    from KDSegmentationLib.inference.banded_operator import SINGLE_THREAD_PRODUCT, BandedOperator
    from KDSegmentationLib.inference.model_grid import _axis_matrix

    slices, spacing_yx = dicom_slices
    grid = ModelGrid(128, 128, mm)
    taps_y, taps_x = grid.input_taps((512, 512), spacing_yx)
    sigma = 0.0 if mm is None else (mm / spacing_yx[0] - 1.0) / 2.0
    matrix = _axis_matrix(taps_y, 512, sigma)
    np.testing.assert_allclose(matrix.sum(axis=1)[taps_y.inside], 1.0, atol=1e-6)
    assert not matrix[~taps_y.inside].any()
    operator = BandedOperator.from_matrix(matrix, other_length=512, max_block_rows=8)
    covered = np.zeros(128, bool)
    for block in operator.blocks:
        assert (block.out_stop - block.out_start) * (block.in_stop - block.in_start) * 512 <= SINGLE_THREAD_PRODUCT
        np.testing.assert_array_equal(block.weights, matrix[block.out_start:block.out_stop,
                                                            block.in_start:block.in_stop])
        assert not covered[block.out_start:block.out_stop].any()
        covered[block.out_start:block.out_stop] = True
    np.testing.assert_array_equal(covered, matrix.any(axis=1))
    assert len(operator.blocks) < 128  # rows are grouped
    np.testing.assert_allclose(operator.row_sums(), matrix.sum(axis=1, dtype=np.float64), rtol=1e-12)
    expected = np.einsum("ji,niw->njw", matrix.astype(np.float64), slices.astype(np.float64))
    start, stop = operator.support
    np.testing.assert_allclose(operator.apply(slices[:, start:stop], axis=1, first_input=start), expected, atol=1e-6)
    np.testing.assert_allclose(operator.apply(np.ascontiguousarray(np.swapaxes(slices, 1, 2)), axis=2),
                               np.swapaxes(expected, 1, 2), atol=1e-6)
    backwards = np.ascontiguousarray(slices[:, ::-1])
    np.testing.assert_allclose(operator.reversed_input().apply(backwards, axis=1), expected, atol=1e-6)
    with pytest.raises(ValueError, match="reads inputs"):
        operator.apply(slices[:, start + 1:stop], axis=1, first_input=start + 1)


@pytest.fixture(scope="module")
def oriented_hu(shared_data):
    """Five slices of the real DICOM CT as the pipeline sees them (canonical views), in four storage orders."""
    image = read_image(shared_data / "ct" / "totalsegmentator_dicom" / "example_ct_dicom")[:, :, 4:9]
    views = []
    for code in ("LPS", "RAS", "LAS", "RPS"):
        oriented = sitk.DICOMOrient(image, code)
        axes = CanonicalAxes(oriented)
        views.append((code, axes.view(sitk.GetArrayViewFromImage(oriented)), (axes.spacing[1], axes.spacing[0]),
                      oriented))  # the image owns the viewed voxels
    return views


@pytest.mark.parametrize("mm", [None, 1.5, 3.0, 4.5], ids=["resize", "1.5 mm", "3 mm (crop)", "4.5 mm (pad)"])
def test_hu_to_model_is_the_windowed_reference_in_any_storage_order(oriented_hu, mm):
    """The pipeline's model input (clipping only the pixels the grid reads, each axis read in storage order, the
    window's shift and scale applied to the result) equals training's to_model(window_to_unit(...)) up to float
    rounding and stays in [0, 1]; a slice alone (the live preview) gets exactly the values it gets in its batch."""
    grid = ModelGrid(128, 128, mm)
    window = (-125, 275)
    orders = set()
    for code, hu, spacing_yx, _ in oriented_hu:
        orders.add((hu.strides[1] < 0, hu.strides[2] < 0))
        unit = window_to_unit(np.array(hu), window)
        got = grid.hu_to_model(hu, spacing_yx, window)
        assert got.shape == (5, 128, 128) and got.dtype == np.float32
        assert got.min() >= 0.0 and got.max() <= 1.0, code
        np.testing.assert_allclose(got, grid.to_model(unit, spacing_yx), atol=2e-6, err_msg=code)
        np.testing.assert_allclose(grid.hu_to_model(hu, spacing_yx, window, fill=0.25),
                                   grid.to_model(unit, spacing_yx, fill=0.25), atol=2e-6, err_msg=code)
        np.testing.assert_allclose(grid.hu_to_model(hu.astype(np.float64) - 0.25, spacing_yx, window),
                                   grid.to_model(window_to_unit(hu - 0.25, window), spacing_yx), atol=2e-6,
                                   err_msg=code)  # the float path of the window
        for index in (0, 3):
            np.testing.assert_array_equal(grid.hu_to_model(hu[index:index + 1], spacing_yx, window)[0], got[index],
                                          err_msg=code)
    assert len(orders) == 4  # every combination of flipped rows / columns was exercised


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
