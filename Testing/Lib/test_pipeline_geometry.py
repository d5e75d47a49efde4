"""Geometry on real CT: any orientation in, the input's exact grid out, labels where anatomy is."""

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.orientation import from_canonical, orientation_code, to_canonical
from KDSegmentationLib.pipeline import SegmentationOptions, segment_image
from KDSegmentationLib.slice_resampling import resize_channels, resize_slices


def _variants(image):
    yield "original (RAS-like, diag(-1,-1,1))", image
    yield "flipped x and z", sitk.Flip(image, [True, False, True])
    yield "permuted (z, x, y)", sitk.PermuteAxes(image, [2, 0, 1])
    yield "permuted and flipped", sitk.Flip(sitk.PermuteAxes(image, [1, 2, 0]), [False, True, False])


def _same_header(a, b):
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin()
    assert a.GetDirection() == b.GetDirection()


def test_real_ct_direction_is_the_documented_one(example_ct):
    assert example_ct.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert orientation_code(example_ct) == "RAS"


def test_every_orientation_gives_the_same_canonical_slices(example_ct):
    reference = sitk.GetArrayFromImage(to_canonical(example_ct))
    for name, variant in _variants(example_ct):
        canonical = to_canonical(variant)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(canonical), reference, err_msg=name)
        np.testing.assert_allclose(canonical.GetDirection(), np.eye(3).ravel(), atol=1e-12)
        back = from_canonical(canonical, variant)
        _same_header(back, variant)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(variant))


def test_segmentation_has_input_geometry_and_is_orientation_invariant(example_ct, plumbing_segmenter):
    options = SegmentationOptions(postprocess=False)
    reference = None
    for name, variant in _variants(example_ct):
        result = segment_image(variant, plumbing_segmenter, options)
        _same_header(result.labels, variant)
        assert result.labels.GetPixelID() == sitk.sitkUInt8
        # Resampled into the original grid (pure permutation, nearest), every variant agrees.
        on_original = sitk.Resample(result.labels, example_ct, sitk.Transform(), sitk.sitkNearestNeighbor)
        labels = sitk.GetArrayFromImage(on_original)
        if reference is None:
            reference = labels
        np.testing.assert_array_equal(labels, reference, err_msg=name)


def test_dicom_series_written_from_real_ct_keeps_geometry(example_ct, plumbing_segmenter, tmp_path):
    from KDSegmentationLib.image_io import read_image

    ct = sitk.Cast(example_ct[:, :, 40:56], sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.8.498.1"
    for z in range(ct.GetDepth()):
        slice_ = ct[:, :, z]
        for key, value in {"0020|000e": uid, "0020|000d": uid + ".0", "0008|0060": "CT",
                           "0020|0013": str(z + 1), "0008|103e": "test series",
                           "0020|0032": "\\".join(map(str, ct.TransformIndexToPhysicalPoint((0, 0, z)))),
                           "0020|0037": "\\".join(map(str, ct.GetDirection()[0:7:3] + ct.GetDirection()[1:8:3])),
                           "0028|1052": "0", "0028|1053": "1"}.items():
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(tmp_path / f"{z:03d}.dcm"))
        writer.Execute(slice_)
    series = read_image(tmp_path)
    assert series.GetSize() == ct.GetSize()
    np.testing.assert_allclose(series.GetOrigin(), ct.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(series.GetSpacing(), ct.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(series.GetDirection(), ct.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(series), sitk.GetArrayFromImage(ct))
    result = segment_image(series, plumbing_segmenter)
    _same_header(result.labels, series)


def test_real_dicom_series_with_reversed_label_order_overlay(shared_data):
    """The DICOM example's label map indexes y the other way; in physical space the liver matches."""
    from KDSegmentationLib.image_io import read_image

    folder = shared_data / "ct" / "totalsegmentator_dicom"
    image = read_image(folder / "example_ct_dicom")
    assert image.GetSize() == (512, 512, 20)
    label = sitk.ReadImage(str(folder / "example_seg_dicom.nii.gz"))
    on_image = sitk.GetArrayFromImage(sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor))
    liver_hu = sitk.GetArrayFromImage(image)[on_image == 5]
    assert liver_hu.size > 10000
    assert 30 < np.median(liver_hu) < 200  # contrast-enhanced liver parenchyma, in HU


def test_resampling_logits_round_trip_keeps_the_real_liver_in_place(shared_data):
    """Liver of a real label map, as one-hot maps, down to the model grid and back (logit path)."""
    seg = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))
    labels = sitk.GetArrayFromImage(to_canonical(seg))[60:76]
    liver = (labels == 5).astype(np.float32)
    maps = np.stack([1 - liver, liver], axis=1)  # (N, 2, Y, X)
    small = np.moveaxis(resize_channels(maps, (64, 64)), -1, 1)
    back = resize_channels(small, labels.shape[1:]).argmax(-1)
    truth = liver.astype(bool)
    dice = 2 * (back.astype(bool) & truth).sum() / (back.sum() + truth.sum())
    assert dice > 0.95
    centroid = np.array(np.nonzero(truth)).mean(1)
    np.testing.assert_allclose(np.array(np.nonzero(back)).mean(1), centroid, atol=0.5)
    # Linear resampling of a constant is exact and keeps values in range.
    const = resize_slices(np.full((2, 101, 122), 0.25, np.float32), (64, 64))
    np.testing.assert_allclose(const, 0.25, atol=1e-6)
