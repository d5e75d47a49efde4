"""The pipeline's fast paths give exactly the straightforward result on real CT.

The reference below is the pipeline written the direct way from the Lib's public
building blocks: reorient a copy (``to_canonical``), window and resize every slice,
resize all class maps and take the argmax, clean up each organ by scanning the whole
map, count volumes with one histogram, reorient back. The pipeline instead views the
input's voxels, picks rows before windowing, interpolates only boundary cells, records
each label's box and works inside the boxes; the results must be identical.
"""

import dataclasses
import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.imaging.image_files import read_image
from KDSegmentationLib.imaging.orientation import CanonicalAxes, from_canonical, to_canonical
from KDSegmentationLib.inference.label_extents import LabelExtents
from KDSegmentationLib.inference.label_volumes import label_volumes_ml
from KDSegmentationLib.inference.model_grid import ModelGrid, sample_slices
from KDSegmentationLib.inference.pipeline import (SegmentationOptions, Segmenter, segment_image,
                                                  structure_label_values)
from KDSegmentationLib.inference.postprocessing import keep_structures, largest_component_and_fill
from KDSegmentationLib.inference.preprocessing import window_to_unit
from KDSegmentationLib.inference.slice_resampling import argmax_resized, resize_channels, resize_slices


class IntensityBandEngine:
    """Scores -(8x - c)^2 for windowed intensity x: all nine classes, in many components with holes."""

    device = "cpu"

    def run(self, batch):
        x = batch[:, 0] * 8.0
        return np.stack([-(x - c) ** 2 for c in range(9)], axis=1).astype(np.float32)


class MemoEngine:
    """Runs the wrapped engine once per distinct input batch (the reference and the pipeline feed the same)."""

    device = "cpu"

    def __init__(self, engine):
        self.engine, self.outputs = engine, {}

    def run(self, batch):
        key = (batch.shape, hashlib.sha1(np.ascontiguousarray(batch).tobytes()).hexdigest())
        if key not in self.outputs:
            self.outputs[key] = self.engine.run(batch)
        return self.outputs[key]


def direct_clean_up(labels, value):
    """One organ's clean-up the direct way: whole map, component sizes by bincount, ITK's BinaryFillhole.

    The largest 26-connected component (ties: the lowest ITK label, the first in raster
    order) plus its 6-connected holes; voxels of the organ outside both become background,
    background inside the holes becomes the organ, other organs are left alone.
    """
    mask = labels == value
    if not mask.any():
        return labels
    ids = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.view(np.uint8)), True))
    sizes = np.bincount(ids.ravel())
    sizes[0] = 0
    largest = sitk.GetImageFromArray((ids == sizes.argmax()).view(np.uint8))
    cleaned = sitk.GetArrayFromImage(sitk.BinaryFillhole(largest, fullyConnected=False)).astype(bool)
    labels[mask & ~cleaned] = 0
    labels[cleaned & (labels == 0)] = value
    return labels


def reference_segment(image, segmenter, options, training_input=False):
    """The direct way (what the pipeline computed before its fast paths).

    ``training_input``: physical-size models get training's model input (``to_model`` of the
    windowed canonical copy) instead of the pipeline's own (see below).
    """
    card = segmenter.card
    keep = structure_label_values(card, options.structures)
    canonical = to_canonical(image)
    hu = sitk.GetArrayFromImage(canonical)
    labels = np.zeros(hu.shape, np.uint8)
    grid = ModelGrid(card.input.height, card.input.width, card.input.pixel_spacing_mm)
    spacing_yx = (canonical.GetSpacing()[1], canonical.GetSpacing()[0])
    # The voxels in the input's storage order, seen canonically (as the pipeline reads them).
    stored = CanonicalAxes(image).view(sitk.GetArrayViewFromImage(image))
    for first in range(0, hu.shape[0], options.batch_size):
        unit = window_to_unit(hu[first:first + options.batch_size], card.input.hu_window)
        if grid.physical:  # blur, sample onto the mm grid, classes sampled back, background outside the grid
            # The pipeline's model input (hu_to_model, which reads each axis in the input's storage order; its
            # equality with to_model up to float rounding is tested in test_model_grid_fast): here the fast
            # paths after the model call are checked bit for bit.
            if training_input:
                model_input = grid.to_model(unit, spacing_yx)
            else:
                model_input = grid.hu_to_model(stored[first:first + options.batch_size], spacing_yx,
                                               card.input.hu_window)
            logits = segmenter.engine.run(model_input[:, None])
            taps_y, taps_x = grid.output_taps(hu.shape[1:], spacing_yx)
            batch = sample_slices(logits, taps_y, taps_x).argmax(axis=1)
            batch[:, ~(taps_y.inside[:, None] & taps_x.inside[None, :])] = 0
        else:
            logits = segmenter.engine.run(resize_slices(unit, (card.input.height, card.input.width))[:, None])
            batch = resize_channels(logits, hu.shape[1:]).argmax(axis=1)
        labels[first:first + options.batch_size] = batch
    keep_structures(labels, keep)
    if options.postprocess:
        for value in keep:
            direct_clean_up(labels, value)
    names = {label.index: label.name for label in card.foreground_labels() if label.index in keep}
    volumes = label_volumes_ml(labels, canonical.GetSpacing(), names)
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(canonical)
    return from_canonical(label_image, image), volumes


@pytest.fixture(scope="module")
def bundled_segmenter():
    segmenter = Segmenter.from_registry(device="cpu", allow_download=False)
    return Segmenter(segmenter.card, MemoEngine(segmenter.engine))


@pytest.fixture(scope="module")
def real_cts(shared_data):
    ct = shared_data / "ct"
    example = read_image(ct / "totalsegmentator_example" / "example_ct.nii.gz")[:, :, 48:80]
    return {
        "nifti 122x101, LPS-flipped": example,
        "nifti as RAS": sitk.DICOMOrient(example, "RAS"),
        "nifti as PIR (sagittal slices)": sitk.DICOMOrient(example, "PIR"),
        "dicom 512x512, y reversed": read_image(ct / "totalsegmentator_dicom" / "example_ct_dicom"),
        "dicom 512x512, 3 slices": read_image(ct / "dcmqi_3slice" / "ct-3slice"),
    }


@pytest.mark.parametrize("engine", ["bundled model", "intensity bands"])
@pytest.mark.parametrize("options", [SegmentationOptions(), SegmentationOptions(postprocess=False),
                                     SegmentationOptions(structures=["liver", "spleen", "stomach"], batch_size=3)],
                         ids=["all organs", "no post-processing", "subset"])
def test_pipeline_equals_the_direct_computation_on_real_ct(real_cts, bundled_segmenter, engine, options):
    segmenter = bundled_segmenter if engine == "bundled model" else Segmenter(bundled_segmenter.card,
                                                                              IntensityBandEngine())
    for name, image in real_cts.items():
        expected, expected_volumes = reference_segment(image, segmenter, options)
        result = segment_image(image, segmenter, options)
        got = result.labels
        assert (got.GetSize(), got.GetSpacing(), got.GetOrigin(), got.GetDirection()) == \
            (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()), name
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(expected),
                                      err_msg=name)
        assert result.volumes_ml == pytest.approx(expected_volumes, rel=1e-12), name
        if engine == "intensity bands" and options.structures is None:
            found = np.unique(sitk.GetArrayViewFromImage(got))
            assert len(found) >= 5, f"{name}: the band engine should exercise many organs, found {found}"


@pytest.mark.parametrize("engine", ["bundled model", "intensity bands"])
@pytest.mark.parametrize("mm", [1.6, 4.5], ids=["1.6 mm grid (crops 512 px slices)", "4.5 mm grid (pads)"])
def test_physical_size_pipeline_matches_the_direct_computation_on_real_ct(real_cts, bundled_segmenter, engine, mm):
    """Physical-size cards at other grid spacings (cropping and padding 512 px slices): the pipeline's labels
    against the direct computation to Dice >= 0.999 per organ (identical unless a pixel sits on a near-exact
    tie)."""
    card = bundled_segmenter.card
    card = dataclasses.replace(card, input=dataclasses.replace(card.input, pixel_spacing_mm=mm))
    segmenter = Segmenter(card, bundled_segmenter.engine if engine == "bundled model" else IntensityBandEngine())
    for name, image in real_cts.items():
        expected, expected_volumes = reference_segment(image, segmenter, SegmentationOptions())
        result = segment_image(image, segmenter)
        got, want = sitk.GetArrayViewFromImage(result.labels), sitk.GetArrayViewFromImage(expected)
        assert result.labels.GetSize() == image.GetSize() and result.labels.GetDirection() == image.GetDirection()
        assert (got == want).mean() > 0.9999, name
        for value in np.unique(want[want > 0]):
            a, b = got == value, want == value
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999, (name, value)


def test_bundled_model_labels_with_trainings_model_input_on_real_ct(real_cts, bundled_segmenter):
    """The pipeline's model input (hu_to_model: window and resampling only where the grid reads, each axis in
    the input's storage order, blocked BLAS products) against training's (window_to_unit, then to_model's blur
    and sampling): the bundled model's labels on real CT in several storage orders agree to Dice >= 0.999 per
    organ (identical unless a pixel sits on a near-exact tie)."""
    for name, image in real_cts.items():
        expected, _ = reference_segment(image, bundled_segmenter, SegmentationOptions(), training_input=True)
        got = sitk.GetArrayFromImage(segment_image(image, bundled_segmenter).labels)
        want = sitk.GetArrayFromImage(expected)
        assert (got == want).mean() > 0.9999, name
        organs = np.unique(want[want > 0])
        assert organs.size or name.endswith("3 slices"), f"{name}: the model found no organ to compare"
        for value in organs:
            a, b = got == value, want == value
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999, (name, value)


def test_canonical_view_is_to_canonical_without_a_copy(real_cts):
    for name, image in real_cts.items():
        image = sitk.Cast(image, sitk.sitkInt16)
        image.SetSpacing((0.7, 0.8, 2.5))
        for code in ("LPS", "RAS", "PIR", "SAL", "ILA"):
            oriented = sitk.DICOMOrient(image, code)
            axes = CanonicalAxes(oriented)
            voxels = sitk.GetArrayViewFromImage(oriented)
            view = axes.view(voxels)
            canonical = to_canonical(oriented)
            np.testing.assert_array_equal(view, sitk.GetArrayViewFromImage(canonical), err_msg=f"{name} {code}")
            assert np.shares_memory(view, voxels)
            assert axes.spacing == canonical.GetSpacing()


def test_argmax_extents_hold_every_label_of_real_organ_maps(shared_data):
    """Boxes recorded while upsampling contain every voxel of their label, on both code paths."""
    seg = sitk.GetArrayFromImage(to_canonical(sitk.ReadImage(
        str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))))[80:96]
    organ_ids = [52, 4, 3, 2, 5, 7, 1, 6]
    onehot = np.stack([~np.isin(seg, organ_ids)] + [seg == i for i in organ_ids], axis=1).astype(np.float32)
    organ_scores = 8 * resize_slices(onehot, (64, 64)) - 4
    noise = np.random.default_rng(0).normal(size=organ_scores.shape).astype(np.float32)
    for logits in (organ_scores, noise):  # boundary-cell path and dense path
        for out_hw in ((300, 211), (48, 40)):
            labels = np.full((20,) + out_hw, 255, np.uint8)  # slices 0, 1, 18, 19 stay unwritten
            extents = LabelExtents(labels.shape)
            for first in range(0, 16, 5):
                batch = logits[first:first + 5]
                argmax_resized(batch, out_hw, out=labels[first + 2:first + 2 + len(batch)], extents=extents,
                               first_slice=first + 2)
            for value in range(9):
                box = extents.box(value, margin=0)
                inside = np.zeros(labels.shape, bool)
                if box is not None:
                    inside[box] = True
                assert not ((labels == value) & ~inside).any(), (value, out_hw)
                assert (box is None) == (not (labels == value).any())


def _synapse_map(shared_data):
    """The real TotalSegmentator map of the example CT (canonical) and its 8 organs in Synapse order."""
    image = to_canonical(sitk.ReadImage(
        str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz")))
    raw = sitk.GetArrayFromImage(image)
    labels = np.zeros(raw.shape, np.uint8)
    for synapse, totalseg in enumerate([52, 4, 3, 2, 5, 7, 1, 6], start=1):
        labels[raw == totalseg] = synapse
    return image, labels


def test_clean_up_and_volumes_inside_boxes_equal_whole_map_scans(shared_data):
    image, labels = _synapse_map(shared_data)
    labels[0:2, 0:3, 0:3] = 5          # liver island at the volume corner (box clamped there)
    labels[60, 50:53, 60:63] = 7       # spleen island
    labels[labels.shape[0] // 2, 40, 40] = 0
    extents = LabelExtents(labels.shape)
    for value in range(1, 9):
        z, y, x = np.nonzero(labels == value)
        extents.include_voxels(np.full(z.shape, value), z, y, x)
    keep = [1, 3, 5, 7, 8]
    whole, boxed = labels.copy(), labels.copy()
    keep_structures(whole, keep)
    keep_structures(boxed, keep, extents)
    np.testing.assert_array_equal(boxed, whole)
    largest_component_and_fill(whole, keep)
    largest_component_and_fill(boxed, keep, extents)
    np.testing.assert_array_equal(boxed, whole)
    assert not (whole[0:2, 0:3, 0:3] == 5).any()
    names = {value: str(value) for value in keep + [2]}
    assert label_volumes_ml(boxed, image.GetSpacing(), names, extents) == label_volumes_ml(whole, image.GetSpacing(),
                                                                                         names)


def test_label_extents_rejects_bad_input():
    with pytest.raises(ValueError, match="Z, Y, X"):
        LabelExtents((4, 4))
    extents = LabelExtents((4, 5, 6))
    with pytest.raises(ValueError, match="0..255"):
        extents.include_box(300, (0, 0, 0), (1, 1, 1))
    assert extents.box(3) is None
    extents.include_box(3, (1, 1, 1), (2, 3, 5))
    assert extents.box(3) == (slice(0, 4), slice(0, 5), slice(0, 6))
    assert extents.box(3, margin=0) == (slice(1, 3), slice(1, 4), slice(1, 6))
    extents.narrow_to(3, (slice(0, 2), slice(2, 5), slice(0, 6)))
    assert extents.box(3, margin=0) == (slice(1, 2), slice(2, 4), slice(1, 6))
    extents.narrow_to(3, (slice(3, 4), slice(0, 5), slice(0, 6)))  # no overlap: the label is gone
    assert extents.box(3) is None and not extents.contains(3)
    extents.narrow_to(4, (slice(0, 1),) * 3)  # never reported: stays absent
    assert extents.box(4) is None


def _organs_with_islands_and_holes(shared_data):
    """The real TotalSegmentator map in Synapse order, with an island at the volume corner, a spleen island,
    a hole in the liver holding a liver island (26-connected to nothing), and a liver hole holding another organ."""
    _, labels = _synapse_map(shared_data)
    z, y, x = (int(np.median(a)) for a in np.nonzero(labels == 5))
    assert (labels[z - 3:z + 4, y - 3:y + 4, x - 3:x + 4] == 5).all()
    labels[z - 2:z + 3, y - 2:y + 3, x - 2:x + 3] = 0   # a 5x5x5 cavity in the liver ...
    labels[z, y, x] = 5                                 # ... holding a liver island
    labels[z - 2, y + 2, x - 2] = 8                      # ... and a stomach voxel
    labels[0:2, 0:3, 0:3] = 5                            # liver island at the volume corner
    labels[60, 50:53, 60:63] = 7                         # spleen island
    return labels


@pytest.mark.parametrize("block", [(1, 4, 4), (1, 1, 1), (2, 3, 5)])
def test_clean_up_equals_the_direct_whole_map_computation_on_real_organs(shared_data, block):
    """Island search on blocks, voxel work near the organ, holes in the largest component's box: the same map as
    the direct computation (whole map, bincount, BinaryFillhole), for any block size, with and without boxes."""
    labels = _organs_with_islands_and_holes(shared_data)
    expected = labels.copy()
    for value in range(1, 9):
        direct_clean_up(expected, value)
    assert expected[tuple(int(np.median(a)) for a in np.nonzero(labels == 5))] == 5  # the island joined the fill
    assert (expected != labels).sum() > 100  # islands removed and holes filled: the test exercises both
    extents = LabelExtents(labels.shape)
    for value in range(1, 9):
        z, y, x = np.nonzero(labels == value)
        extents.include_voxels(np.full(z.shape, value), z, y, x)
    for boxes in (extents, None):
        got = largest_component_and_fill(labels.copy(), range(1, 9), boxes, block=block)
        np.testing.assert_array_equal(got, expected, err_msg=f"block {block}, extents {boxes is not None}")
    for value in range(1, 9):  # the boxes were narrowed to the cleaned organs: they still hold every voxel
        inside = np.zeros(labels.shape, bool)
        inside[extents.box(value, margin=0)] = True
        assert not ((expected == value) & ~inside).any(), value
    liver_box = extents.box(5, margin=0)
    assert liver_box[0].start > 0  # no longer reaching the corner island


def test_organs_examined_concurrently_give_the_map_of_one_by_one(shared_data):
    """Organs examined on threads, changes written in label order: the same map and boxes as one organ after
    another, also where an earlier organ's island lies in a later organ's cavity (removed first, then filled)
    and a later organ's voxel in an earlier one's (kept out of the fill, then removed as an island)."""
    labels = _organs_with_islands_and_holes(shared_data)
    z, y, x = (int(np.median(a)) for a in np.nonzero(labels == 5))
    labels[z + 2, y - 2, x + 2] = 3  # a left-kidney island in the liver's cavity
    results = []
    for workers in (1, 3):
        extents = LabelExtents(labels.shape)
        for value in range(1, 9):
            zz, yy, xx = np.nonzero(labels == value)
            extents.include_voxels(np.full(zz.shape, value), zz, yy, xx)
        calls = []
        got = largest_component_and_fill(labels.copy(), range(1, 9), extents, workers=workers,
                                         before_each=lambda done, value: calls.append((done, value)))
        assert calls == list(enumerate(range(1, 9)))
        results.append((got, extents._lower.copy(), extents._upper.copy()))
    for one, many in zip(results[0], results[1]):
        np.testing.assert_array_equal(many, one)
    assert results[0][0][z + 2, y - 2, x + 2] == 5 and results[0][0][z - 2, y + 2, x - 2] == 0

    def stop(done, value):
        if done == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        largest_component_and_fill(labels.copy(), range(1, 9), workers=2, before_each=stop)
    with pytest.raises(ValueError, match="workers"):
        largest_component_and_fill(labels.copy(), [1], workers=0)


def test_equal_components_the_first_in_raster_order_is_kept():
    """Ties between block components far apart and between components inside one block component."""
    for second in ((2, 10, 10), (2, 2, 6), (4, 2, 2)):  # far away; a gap of two voxels; two slices on
        labels = np.zeros((5, 20, 20), np.uint8)
        labels[2, 2:4, 2:4] = 4
        labels[second[0], second[1]:second[1] + 2, second[2]:second[2] + 2] = 4
        expected = direct_clean_up(labels.copy(), 4)
        for block in ((1, 4, 4), (1, 1, 1), (2, 8, 8)):
            np.testing.assert_array_equal(largest_component_and_fill(labels.copy(), [4], block=block), expected)
        assert (expected[2, 2:4, 2:4] == 4).all() and (expected == 4).sum() == 4
    ring = np.zeros((3, 9, 9), np.uint8)  # a hole open to the array face through the z faces is not a hole
    ring[:, 2:7, 2:7] = 1
    ring[:, 4, 4] = 0
    np.testing.assert_array_equal(largest_component_and_fill(ring.copy(), [1]), direct_clean_up(ring.copy(), 1))
