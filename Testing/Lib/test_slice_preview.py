"""One-slice preview on the real sample CT with the bundled model: equal to the full run's slice."""

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.errors import InputImageError, ModelNotFoundError
from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.imaging.slicer_geometry import ijk_to_ras_from_image
from KDSegmentationLib.inference.pipeline import SegmentationOptions, Segmenter, segment_image
from KDSegmentationLib.inference.slice_preview import PreviewVolume, SlicePreviewer
from KDSegmentationLib.resources import sample_ct_path


@pytest.fixture(scope="module")
def bundled_segmenter():
    return Segmenter.from_registry(device="cpu", allow_download=False)


@pytest.fixture(scope="module", params=["resize", "physical"])
def mode_segmenter(request, bundled_segmenter):
    """The bundled graph in both input modes: behind a card in resize mode, and behind its own physical-size
    card (3 mm model pixels; the resize mode gives 2.4-2.9 mm on the sample)."""
    card = bundled_segmenter.card
    assert card.input.pixel_spacing_mm is not None  # the bundled v2 model is physical-size
    if request.param == "resize":
        return Segmenter(replace(card, input=replace(card.input, pixel_spacing_mm=None)), bundled_segmenter.engine)
    return bundled_segmenter


@pytest.fixture(scope="module")
def sample_ct():
    return sitk.ReadImage(str(sample_ct_path()))


def _full_labels_before_postprocessing(image, segmenter, structures=None):
    result = segment_image(image, segmenter, SegmentationOptions(structures=structures, postprocess=False))
    return result.labels


def _input_slab(full_kji, preview):
    """The full run's labels at the preview's slice, on the input grid (length 1 along the axial axis)."""
    index = [slice(None)] * 3
    index[preview.input_axis] = slice(preview.input_index, preview.input_index + 1)
    return full_kji[tuple(index)]


def test_preview_of_each_slice_equals_that_slice_of_the_full_run(sample_ct, mode_segmenter):
    full = sitk.GetArrayFromImage(_full_labels_before_postprocessing(sample_ct, mode_segmenter))  # input grid
    assert set(np.unique(full)) >= {0, 5, 7}, "the bundled model finds liver and spleen on the sample"
    volume = PreviewVolume.from_image(sample_ct)
    previewer = SlicePreviewer(mode_segmenter)
    depth = volume.shape[0]
    organ_slices = 0
    for index in sorted(set(range(0, depth, 3)) | {depth - 1}):
        preview = previewer.segment_slice(volume, index)
        assert preview.index == index
        # The sample is stored R-A-S (sitk direction diag(-1, -1, 1)): K is axial, from the feet like z.
        assert (preview.input_axis, preview.input_index) == (0, index)
        assert preview.labels.dtype == np.uint8 and preview.labels.shape == (1,) + full.shape[1:]
        np.testing.assert_array_equal(preview.labels, _input_slab(full, preview), err_msg=f"slice {index}")
        np.testing.assert_allclose(preview.ijk_to_ras[:3, :3], ijk_to_ras_from_image(sample_ct)[:3, :3])
        organ_slices += bool(preview.labels.any())
        assert preview.timings["infer"] > 0
    assert organ_slices >= 10, "the comparison must cover slices with organs, not only background"


def test_preview_keeps_only_the_chosen_structures_like_the_full_run(sample_ct, bundled_segmenter):
    full = sitk.GetArrayFromImage(_full_labels_before_postprocessing(sample_ct, bundled_segmenter, ["spleen"]))
    volume = PreviewVolume.from_image(sample_ct)
    previewer = SlicePreviewer(bundled_segmenter, structures=["spleen"])
    spleen_slices = np.flatnonzero((full == 7).any(axis=(1, 2)))
    assert spleen_slices.size
    for index in (int(spleen_slices[0]), int(spleen_slices[spleen_slices.size // 2]), 0):
        preview = previewer.segment_slice(volume, index)
        np.testing.assert_array_equal(preview.labels, _input_slab(full, preview))
        assert set(np.unique(preview.labels)) <= {0, 7}


@pytest.mark.parametrize("stored_as, axial_axis", [("IRA", 2), ("PSL", 1)])
def test_preview_lands_on_the_input_grid_whatever_the_orientation(sample_ct, mode_segmenter, stored_as,
                                                                  axial_axis):
    """The same CT with anisotropic voxels stored in another voxel order (flipped; permuted so that the axial
    axis is I or J): the preview is a one-slice volume on the input's grid, equal to the full run there
    (physical mode: resampled with the same in-plane spacing), each voxel exactly on the input voxel it
    describes."""
    anisotropic = sitk.Image(sample_ct)
    anisotropic.SetSpacing((3.3, 2.7, 3.0))
    stored = sitk.DICOMOrient(anisotropic, stored_as)
    full_image = _full_labels_before_postprocessing(stored, mode_segmenter)
    full = sitk.GetArrayFromImage(full_image)  # on the stored grid
    volume = PreviewVolume.from_kji_array(sitk.GetArrayFromImage(stored), ijk_to_ras_from_image(stored))
    np.testing.assert_array_equal(volume.hu, sitk.GetArrayFromImage(to_canonical(sample_ct)))
    np.testing.assert_allclose(volume.ijk_to_ras, ijk_to_ras_from_image(to_canonical(stored)), atol=1e-9)
    index = int((sitk.GetArrayFromImage(to_canonical(full_image)) > 0).sum(axis=(1, 2)).argmax())
    preview = SlicePreviewer(mode_segmenter).segment_slice(volume, index)
    assert preview.input_axis == axial_axis and preview.labels.shape[axial_axis] == 1
    slab = _input_slab(full, preview)
    assert slab.any()
    np.testing.assert_array_equal(preview.labels, slab)
    # Geometry: the slab's voxel (0, 0, 0) of the preview is the input voxel at the slab's start.
    start = [0, 0, 0]
    start[2 - axial_axis] = preview.input_index
    np.testing.assert_allclose(preview.ijk_to_ras, ijk_to_ras_from_image(stored) @ _translation(start), atol=1e-9)


def _translation(ijk):
    matrix = np.eye(4)
    matrix[:3, 3] = ijk
    return matrix


def test_bad_slice_index_and_structure_names(sample_ct, bundled_segmenter):
    volume = PreviewVolume.from_image(sample_ct)
    previewer = SlicePreviewer(bundled_segmenter)
    for index in (-1, volume.shape[0], 2.5, True):
        with pytest.raises(ValueError, match=r"slice index must be a whole number in \[0, 111\]"):
            previewer.segment_slice(volume, index)
    with pytest.raises(ModelNotFoundError, match="heart"):
        SlicePreviewer(bundled_segmenter, structures=["heart"])


def test_preview_volume_rejects_images_that_are_not_3d_ct(sample_ct):
    with pytest.raises(InputImageError):
        PreviewVolume.from_image(sample_ct[:, :, 40])
    with pytest.raises(ValueError, match="4x4 affine"):
        PreviewVolume.from_kji_array(np.zeros((2, 3, 4), np.int16), np.eye(3))


@pytest.mark.parametrize("stored_as", ["RAS", "IRA", "PSL"])
def test_preview_volume_reports_the_canonical_in_plane_spacing(sample_ct, stored_as):
    anisotropic = sitk.Image(sample_ct)
    anisotropic.SetSpacing((0.8, 0.6, 2.5))
    stored = sitk.DICOMOrient(anisotropic, stored_as)
    spacing = to_canonical(stored).GetSpacing()  # (x, y, z)
    assert PreviewVolume.from_image(stored).spacing_yx == pytest.approx((spacing[1], spacing[0]))
