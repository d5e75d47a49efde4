"""Slice resizing between image and model grids: the same sampling as SimpleITK.

That training (torch) resizes the same way is checked in Testing/Training/test_resize_parity.py.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.inference.preprocessing import window_to_unit
from KDSegmentationLib.inference.slice_resampling import argmax_resized, axis_weights, resize_channels, resize_slices


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
