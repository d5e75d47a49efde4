"""Geometry on real CT: any orientation in, the input's exact grid out, labels where the anatomy is.

An untrained model predicts nothing meaningful, so where labels land is tested with a
deterministic "oracle" engine: the input volume encodes a real reference organ mask
(+1000 inside, -1000 outside, in HU), and the oracle turns each windowed model-grid
slice x into the class scores (1 - x, x). Everything else is the real pipeline:
canonicalisation, windowing, resizing to the model grid, class maps back to the
input grid, argmax, post-processing and the way back to the input's orientation.
The result must reproduce the reference mask where the reference has it.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.imaging.orientation import from_canonical, orientation_code, to_canonical
from KDSegmentationLib.inference.pipeline import SegmentationOptions, Segmenter, segment_image
from KDSegmentationLib.weights.model_registry import InputSpec, LabelInfo, ModelCard

# TotalSegmentator 'total' ids of the reference label maps (see shared/data/README.md).
TS_LIVER, TS_SPLEEN = 5, 1


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


class OracleEngine:
    """Class scores (background, organ) = (1 - x, x) for windowed slices x in [0, 1]."""

    device = "cpu"

    def run(self, batch):
        x = batch[:, 0]
        return np.stack([1.0 - x, x], axis=1).astype(np.float32)


def _oracle_segmenter(size=64):
    labels = (LabelInfo(0, "background", "Background", (0, 0, 0)), LabelInfo(1, "organ", "Organ", (200, 100, 50)))
    card = ModelCard("oracle", "oracle", "0", "test double", "none", "none.onnx", 1, "0" * 64, ("none.onnx",),
                     InputSpec(1, size, size, (-1000.0, 1000.0)), labels)
    return Segmenter(card, OracleEngine())


def _mask_as_ct(mask_image):
    """A CT-like image: +1000 HU inside the mask, -1000 HU (air) outside; same grid."""
    ct = sitk.Cast(mask_image, sitk.sitkInt16) * 2000 - 1000
    ct.CopyInformation(mask_image)
    return ct


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _centroid(mask):
    return np.array(np.nonzero(mask)).mean(axis=1)


@pytest.fixture(scope="module")
def reference_seg(shared_data):
    return sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))


def test_real_ct_direction_is_the_documented_one(example_ct):
    assert example_ct.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert orientation_code(example_ct) == "RAS"
    assert orientation_code(to_canonical(example_ct)) == "LPS"


def test_every_orientation_gives_the_same_canonical_slices(example_ct):
    reference = sitk.GetArrayFromImage(to_canonical(example_ct))
    for name, variant in _variants(example_ct):
        canonical = to_canonical(variant)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(canonical), reference, err_msg=name)
        np.testing.assert_allclose(canonical.GetDirection(), np.eye(3).ravel(), atol=1e-12)
        back = from_canonical(canonical, variant)
        _same_header(back, variant)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(variant))


@pytest.mark.parametrize("organ, min_dice", [(TS_LIVER, 0.97), (TS_SPLEEN, 0.93)])
def test_reference_organ_lands_where_it_is_in_every_orientation(reference_seg, organ, min_dice):
    """Real organ mask through the whole pipeline (64 x 64 model grid) in four orientations."""
    segmenter = _oracle_segmenter(64)
    truth_image = sitk.Cast(reference_seg == organ, sitk.sitkUInt8)
    truth = sitk.GetArrayFromImage(truth_image).astype(bool)
    assert truth.sum() > 1000
    for name, variant in _variants(_mask_as_ct(truth_image)):
        result = segment_image(variant, segmenter, SegmentationOptions(postprocess=False))
        _same_header(result.labels, variant)
        assert result.warnings == []
        # Back onto the original grid (a pure permutation, so nearest neighbour is exact).
        labels = sitk.GetArrayFromImage(sitk.Resample(result.labels, reference_seg, sitk.Transform(),
                                                      sitk.sitkNearestNeighbor)).astype(bool)
        assert _dice(labels, truth) > min_dice, name
        # No half-pixel (1.5 mm) shift along any axis, whatever the orientation.
        np.testing.assert_allclose(_centroid(labels), _centroid(truth), atol=0.15, err_msg=name)
        voxel_ml = np.prod(reference_seg.GetSpacing()) / 1000
        assert result.volumes_ml["organ"] == pytest.approx(labels.sum() * voxel_ml)


def test_reference_liver_lands_in_place_on_the_real_dicom_series(shared_data):
    """512 x 512 DICOM (y stored the other way round than its label map) -> 224 grid -> back."""
    from KDSegmentationLib.imaging.image_files import read_image

    folder = shared_data / "ct" / "totalsegmentator_dicom"
    image = read_image(folder / "example_ct_dicom")
    seg = sitk.ReadImage(str(folder / "example_seg_dicom.nii.gz"))
    liver = sitk.Resample(sitk.Cast(seg == TS_LIVER, sitk.sitkUInt8), image, sitk.Transform(),
                          sitk.sitkNearestNeighbor)
    truth = sitk.GetArrayFromImage(liver).astype(bool)
    result = segment_image(_mask_as_ct(liver), _oracle_segmenter(224), SegmentationOptions(postprocess=False))
    _same_header(result.labels, image)
    labels = sitk.GetArrayFromImage(result.labels).astype(bool)
    assert _dice(labels, truth) > 0.98
    np.testing.assert_allclose(_centroid(labels), _centroid(truth), atol=0.3)  # 0.3 of a 0.98 mm pixel


def test_postprocessing_keeps_the_largest_component_of_a_real_mask(reference_seg):
    truth_image = sitk.Cast(reference_seg == TS_LIVER, sitk.sitkUInt8)
    ct = _mask_as_ct(truth_image)
    # A far-away island of "organ" that the largest-component step must drop.
    array = sitk.GetArrayFromImage(ct)
    array[2:5, 2:5, 2:5] = 1000
    island = sitk.GetImageFromArray(array)
    island.CopyInformation(ct)
    raw = segment_image(island, _oracle_segmenter(), SegmentationOptions(postprocess=False))
    clean = segment_image(island, _oracle_segmenter(), SegmentationOptions(postprocess=True))
    raw_labels, clean_labels = (sitk.GetArrayFromImage(r.labels) for r in (raw, clean))
    assert raw_labels[2:5, 2:5, 2:5].any() and not clean_labels[2:5, 2:5, 2:5].any()
    truth = sitk.GetArrayFromImage(truth_image).astype(bool)
    assert _dice(clean_labels.astype(bool), truth) > 0.97


def test_segmentation_has_input_geometry_and_is_orientation_invariant(example_ct, plumbing_segmenter):
    """The real (untrained) ONNX graph: same labels, physically, whatever the orientation."""
    options = SegmentationOptions(postprocess=False)
    reference = None
    for name, variant in _variants(example_ct):
        result = segment_image(variant, plumbing_segmenter, options)
        _same_header(result.labels, variant)
        assert result.labels.GetPixelID() == sitk.sitkUInt8
        on_original = sitk.Resample(result.labels, example_ct, sitk.Transform(), sitk.sitkNearestNeighbor)
        labels = sitk.GetArrayFromImage(on_original)
        if reference is None:
            reference = labels
        np.testing.assert_array_equal(labels, reference, err_msg=name)


def test_dicom_series_written_from_real_ct_keeps_geometry(example_ct, plumbing_segmenter, tmp_path):
    from KDSegmentationLib.imaging.image_files import read_image

    ct = sitk.Cast(example_ct[:, :, 40:56], sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.8.498.1"
    direction = ct.GetDirection()
    for z in range(ct.GetDepth()):
        slice_ = ct[:, :, z]
        for key, value in {"0020|000e": uid, "0020|000d": uid + ".0", "0008|0060": "CT",
                           "0020|0013": str(z + 1), "0008|103e": "test series",
                           "0020|0032": "\\".join(map(str, ct.TransformIndexToPhysicalPoint((0, 0, z)))),
                           "0020|0037": "\\".join(map(str, direction[0:7:3] + direction[1:8:3])),
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
    # The same voxels as NIfTI give the same labels: DICOM reading adds no flip or shift.
    from_nifti = segment_image(ct, plumbing_segmenter)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(from_nifti.labels))


def test_real_dicom_series_with_reversed_label_order_overlay(shared_data):
    """The DICOM example's label map indexes y the other way; in physical space the liver matches."""
    from KDSegmentationLib.imaging.image_files import read_image

    folder = shared_data / "ct" / "totalsegmentator_dicom"
    image = read_image(folder / "example_ct_dicom")
    assert image.GetSize() == (512, 512, 20)
    label = sitk.ReadImage(str(folder / "example_seg_dicom.nii.gz"))
    on_image = sitk.GetArrayFromImage(sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor))
    liver_hu = sitk.GetArrayFromImage(image)[on_image == TS_LIVER]
    assert liver_hu.size > 10000
    assert 30 < np.median(liver_hu) < 200  # contrast-enhanced liver parenchyma, in HU
