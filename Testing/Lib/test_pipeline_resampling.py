"""Slice resizing between image and model grids: the same sampling as SimpleITK.

That training (torch) resizes the same way is checked in Testing/Training/test_resize_parity.py.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.inference.preprocessing import window_to_unit
from KDSegmentationLib.inference.slice_resampling import (_cell_corners, _contending_classes, argmax_resized,
                                                         axis_weights, resize_channels, resize_slices)


@pytest.fixture(scope="module")
def real_slices(shared_data):
    """Six windowed axial slices (512 x 512) of the real DICOM CT, canonical orientation."""
    from KDSegmentationLib.imaging.image_files import read_image

    image = to_canonical(read_image(shared_data / "ct" / "totalsegmentator_dicom" / "example_ct_dicom"))
    return window_to_unit(sitk.GetArrayFromImage(image)[7:13], (-125, 275))


def _sitk_edge_aligned(slices, out_hw):
    """SimpleITK's own linear resampling onto the edge-aligned grid of out_hw (pixel centres at (i + 0.5) * s - 0.5)."""
    n, h, w = slices.shape
    image = sitk.GetImageFromArray(slices.astype(np.float32))
    spacing = (w / out_hw[1], h / out_hw[0], 1.0)
    origin = (spacing[0] / 2 - 0.5, spacing[1] / 2 - 0.5, 0.0)
    out = sitk.Resample(image, (out_hw[1], out_hw[0], n), sitk.Transform(), sitk.sitkLinear, origin, spacing,
                        image.GetDirection(), 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


@pytest.mark.parametrize("out_hw", [(224, 224), (64, 64), (300, 180)])
def test_resize_equals_simpleitk_bilinear_on_real_ct(real_slices, out_hw):
    ours = resize_slices(real_slices, out_hw)
    assert ours.shape == (6, *out_hw) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _sitk_edge_aligned(real_slices, out_hw), atol=2e-5)


def test_upsampling_model_grid_to_image_grid_equals_simpleitk(real_slices):
    small = resize_slices(real_slices, (64, 64))
    np.testing.assert_allclose(resize_slices(small, (512, 512)), _sitk_edge_aligned(small, (512, 512)), atol=2e-5)


def test_argmax_of_resized_class_maps_equals_full_argmax(real_slices):
    rng = np.random.default_rng(0)
    # Smooth, realistic class maps: windowed CT scaled differently per class, plus noise.
    small = resize_slices(real_slices, (64, 64))
    logits = np.stack([small * rng.uniform(-3, 3) + rng.normal(0, 0.3, small.shape) for _ in range(9)], 1)
    logits = logits.astype(np.float32)
    expected = resize_channels(logits, (512, 512)).argmax(axis=1)
    # Noise: almost every pixel is a boundary (the dense path).
    noise = rng.normal(size=logits.shape).astype(np.float32)
    np.testing.assert_array_equal(argmax_resized(noise, (512, 512)), resize_channels(noise, (512, 512)).argmax(1))
    out = np.full((6, 512, 512), 99, np.uint8)
    result = argmax_resized(logits, (512, 512), out=out)
    assert result is out
    np.testing.assert_array_equal(result, expected)
    # Ties go to the lower class, like argmax.
    tied = np.zeros((1, 3, 4, 4), np.float32)
    assert (argmax_resized(tied, (8, 8)) == 0).all()


def test_argmax_shortcut_on_organ_shaped_maps_is_exact(shared_data):
    """Most pixels take the shortcut (all four sources agree); the answer must not change."""
    seg = sitk.GetArrayFromImage(to_canonical(sitk.ReadImage(
        str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))))[84:92]  # upper abdomen: all eight organs
    organ_ids = [52, 4, 3, 2, 5, 7, 1, 6]
    onehot = np.stack([~np.isin(seg, organ_ids)] + [seg == i for i in organ_ids], axis=1).astype(np.float32)
    logits = 8 * resize_slices(onehot, (64, 64)) - 4
    expected = resize_channels(logits, (512, 512)).argmax(axis=1)
    result = argmax_resized(logits, (512, 512))
    np.testing.assert_array_equal(result, expected)
    assert len(np.unique(result)) >= 5  # several organs, so many boundaries were interpolated
    one_class = argmax_resized(logits[:, :1], (300, 200))
    assert one_class.shape == (8, 300, 200) and not one_class.any()


def test_constant_is_exact_and_size_unchanged_is_a_copy():
    const = resize_slices(np.full((2, 101, 122), 0.25, np.float32), (64, 64))
    np.testing.assert_allclose(const, 0.25, atol=1e-7)
    source = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    same = resize_slices(source, (3, 4))
    np.testing.assert_array_equal(same, source)
    same[0, 0, 0] = 99
    assert source[0, 0, 0] == 0


def test_axis_weights_are_edge_aligned():
    lo, hi, w = axis_weights(2, 4)
    # Output pixel centres at 0.25, 0.75, 1.25, 1.75 of 2 input pixels -> positions -0.25 (clamped), 0.25, 0.75, 1.25.
    np.testing.assert_array_equal(lo, [0, 0, 0, 1])
    np.testing.assert_allclose(lo + w * (hi - lo), [0, 0.25, 0.75, 1.0])
    with pytest.raises(ValueError, match="axis lengths"):
        axis_weights(0, 4)


def test_resampling_class_maps_round_trip_keeps_the_real_liver_in_place(shared_data):
    """Liver of a real label map, as one-hot maps, down to the model grid and back."""
    seg = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))
    labels = sitk.GetArrayFromImage(to_canonical(seg))[60:76]
    liver = (labels == 5).astype(np.float32)
    maps = np.stack([1 - liver, liver], axis=1)  # (N, 2, Y, X)
    small = resize_channels(maps, (64, 64))
    assert small.shape == (16, 2, 64, 64)
    back = argmax_resized(small, labels.shape[1:]).astype(bool)
    truth = liver.astype(bool)
    dice = 2 * (back & truth).sum() / (back.sum() + truth.sum())
    assert dice > 0.95
    np.testing.assert_allclose(np.array(np.nonzero(back)).mean(1), np.array(np.nonzero(truth)).mean(1), atol=0.2)


def test_shape_errors_are_explicit():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        resize_channels(np.zeros((3, 4, 4)), (2, 2))
    with pytest.raises(ValueError, match="uint8"):
        argmax_resized(np.zeros((1, 2, 4, 4), np.float32), (4, 4), out=np.zeros((1, 4, 4), np.int32))


def test_argmax_with_tied_classes_on_organ_maps_is_exact(shared_data):
    """Boundary cells interpolate only the classes that can win there: exact ties between classes (the lower
    class wins) and a patch where all nine classes tie (all contend) give the full argmax."""
    seg = sitk.GetArrayFromImage(to_canonical(sitk.ReadImage(
        str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))))[84:90]
    organ_ids = [52, 4, 3, 2, 5, 7, 1, 6]
    onehot = np.stack([~np.isin(seg, organ_ids)] + [seg == i for i in organ_ids], axis=1).astype(np.float32)
    logits = 8 * resize_slices(onehot, (48, 40)) - 4
    logits[:, 4] = logits[:, 3]  # the left kidney's scores for the right kidney too: 3 wins every tie
    logits[:, :, 20:24, 10:16] = np.float32(1.5)  # every class ties in a patch ...
    logits[:, 7, 22, 12] += np.float32(1e-6)  # ... but at one pixel
    for out_hw in ((512, 512), (300, 211), (37, 29)):
        expected = resize_channels(logits, out_hw).argmax(axis=1)
        np.testing.assert_array_equal(argmax_resized(logits, out_hw), expected, err_msg=str(out_hw))


def test_classes_left_out_of_a_cell_never_win_its_float32_blend():
    """Near-ties (a few float32 steps apart, scores up to 1e4): a class the contender test leaves out loses at
    every pixel of the cell under the blend's exact float32 arithmetic, at any weights."""
    rng = np.random.default_rng(5)
    cells, classes = 4000, 9
    scale = np.float32(10.0) ** rng.integers(-2, 5, (cells, 1)).astype(np.float32)
    base = rng.normal(size=(cells, classes))  # a class's four corner scores lie close together, as in real maps
    corners = [((base + rng.normal(0, 0.2, base.shape)) * scale).astype(np.float32).T for _ in range(4)]  # (C, M)
    for corner in corners:  # class 1 two float32 steps below class 0, class 4 a tiny bit above class 2
        corner[1] = np.nextafter(np.nextafter(corner[0], -np.inf), -np.inf)
        corner[4] = corner[2] + np.abs(corner[2]) * np.float32(1e-6)
    classes_of, first, counts = _contending_classes(corners)
    contending = np.zeros((cells, classes), bool)
    contending[np.repeat(np.arange(cells), counts), classes_of] = True
    assert 1 < counts.mean() < classes - 2  # some classes are left out, near-ties are kept
    top_left, bottom_left, top_right, bottom_right = (c[:, :, None, None] for c in corners)  # (C, M, 1, 1)
    weights = np.concatenate([np.linspace(0, 1, 11), rng.random(5)]).astype(np.float32)
    fy, fx = weights[:, None], weights[None, :]
    left = top_left + (bottom_left - top_left) * fy
    right = top_right + (bottom_right - top_right) * fy
    winners = (left + (right - left) * fx).argmax(axis=0)  # (M, 16, 16): the blend of resize_slices
    assert np.take_along_axis(contending, winners.reshape(cells, -1), axis=1).all()


def test_argmax_contenders_hold_every_class_that_wins_a_cell_pixel(shared_data):
    """The contenders of a real organ map's boundary cells include every class the full computation picks
    there, and leave most classes out (so the shortcut is taken)."""
    seg = sitk.GetArrayFromImage(to_canonical(sitk.ReadImage(
        str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))))[84:88]
    organ_ids = [52, 4, 3, 2, 5, 7, 1, 6]
    onehot = np.stack([~np.isin(seg, organ_ids)] + [seg == i for i in organ_ids], axis=1).astype(np.float32)
    logits = 8 * resize_slices(onehot, (32, 32)) - 4 + np.random.default_rng(0).normal(
        0, 0.5, (4, 9, 32, 32)).astype(np.float32)
    full = resize_channels(logits, (128, 128)).argmax(axis=1)
    batch, cell_y, cell_x = np.nonzero(np.ones((4, 32, 32), bool))  # every cell
    next_pixel = np.minimum(np.arange(32) + 1, 31)
    classes, _, counts = _contending_classes(_cell_corners(logits, batch, cell_y, cell_x, next_pixel, next_pixel))
    contending = np.zeros((4, 32, 32, 9), bool)
    contending.reshape(-1, 9)[np.repeat(np.arange(batch.size), counts), classes] = True
    lo = axis_weights(32, 128)[0]  # the cell of each output row and column
    n, y, x = np.indices(full.shape)
    assert contending[n, lo[y], lo[x], full].all()
    assert counts.mean() < 2 and counts.max() >= 3  # of 9 classes


def test_argmax_writes_through_reversed_views(real_slices):
    """The pipeline writes labels through a view of the map in the input's voxel order (axes reversed)."""
    small = resize_slices(real_slices, (40, 40))
    logits = np.stack([small * c - c for c in range(4)], 1).astype(np.float32)
    expected = argmax_resized(logits, (100, 90))
    for flip in ((slice(None, None, -1),) * 3, (slice(None), slice(None, None, -1)),
                 (slice(None), slice(None), slice(None, None, -1))):
        base = np.zeros((6, 100, 90), np.uint8)
        argmax_resized(logits, (100, 90), out=base[flip])
        np.testing.assert_array_equal(base[flip], expected)
