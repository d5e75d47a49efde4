"""Post-processing and volumes: synthetic maps for the math, a real label map for scale."""

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.inference.postprocessing import keep_structures, largest_component_and_fill
from KDSegmentationLib.inference.label_volumes import label_volumes_ml


def test_largest_component_is_kept_and_holes_filled_without_touching_other_organs():
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:8, 2:10, 2:10] = 5
    labels[4, 5, 5] = 0          # hole inside the liver
    labels[4, 6, 6] = 7          # another organ enclosed by the liver: must stay
    labels[1, 15:17, 15:17] = 5  # small separate island of the liver
    labels[0:3, 15:18, 0:3] = 8
    labels[9, 19, 19] = 8        # stray voxel of the stomach
    out = largest_component_and_fill(labels.copy(), [5, 7, 8])
    assert out[4, 5, 5] == 5
    assert out[4, 6, 6] == 7
    assert not (out[1, 15:17, 15:17] == 5).any()
    assert (out[0:3, 15:18, 0:3] == 8).all() and out[9, 19, 19] == 0
    # A cavity open to the outside is not a hole.
    open_cavity = np.zeros((7, 7, 7), np.uint8)
    open_cavity[1:6, 1:6, 1:6] = 1
    open_cavity[3, 3, 3:7] = 0
    assert (largest_component_and_fill(open_cavity.copy(), [1]) == open_cavity).all()


def test_diagonal_neighbours_stay_one_component():
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[1, 1, 1] = labels[2, 2, 2] = labels[3, 3, 3] = 2  # 26-connected chain
    labels[1, 1, 1:3] = 2
    out = largest_component_and_fill(labels.copy(), [2])
    np.testing.assert_array_equal(out, labels)


def test_real_label_map_islands_removed_and_main_organ_kept(shared_data):
    seg = sitk.GetArrayFromImage(sitk.ReadImage(
        str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz")))
    liver = np.where(seg == 5, 5, 0).astype(np.uint8)
    before = int((liver == 5).sum())
    liver[0:3, 0:3, 0:3] = 5  # an island far from the liver
    out = largest_component_and_fill(liver, [5])
    assert not out[0:3, 0:3, 0:3].any()
    assert (out == 5).sum() >= before  # the organ itself is kept (and holes, if any, filled)


def test_keep_structures_and_volumes():
    labels = np.array([[[0, 1, 2], [5, 5, 8]]], np.uint8)
    keep_structures(labels, [5])
    assert labels.tolist() == [[[0, 0, 0], [5, 5, 0]]]
    volumes = label_volumes_ml(labels, (2.0, 1.0, 0.5), {5: "liver", 8: "stomach"})
    assert volumes == {"liver": 0.002, "stomach": 0.0}
    with pytest.raises(ValueError, match="uint8"):
        keep_structures(labels.astype(np.int32), [5])
    with pytest.raises(ValueError, match="integer"):
        label_volumes_ml(labels.astype(np.float32), (1, 1, 1), {5: "liver"})


def test_volume_of_real_liver_in_millilitres(shared_data):
    image = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))
    labels = sitk.GetArrayFromImage(image).astype(np.uint8)
    volumes = label_volumes_ml(labels, image.GetSpacing(), {5: "liver", 1: "spleen"})
    # 3 mm isotropic voxels are 0.027 mL; an adult liver is 1-2.5 L, a spleen 0.1-0.5 L.
    assert volumes["liver"] == pytest.approx((labels == 5).sum() * 0.027)
    assert 1000 < volumes["liver"] < 2500 and 50 < volumes["spleen"] < 600
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(image)
    assert volumes["liver"] == pytest.approx(stats.GetPhysicalSize(5) / 1000)


def test_several_cavities_are_filled_and_a_channel_to_the_outside_is_not():
    """Two enclosed cavities (filled), one reaching the box face through a channel (kept), as BinaryFillhole."""
    labels = np.zeros((12, 16, 16), np.uint8)
    labels[1:11, 2:14, 2:14] = 3
    labels[3:5, 4:6, 4:6] = 0       # cavity 1
    labels[7:9, 9:12, 9:11] = 0     # cavity 2
    labels[5, 8:10, 4:6] = 0        # cavity 3 ...
    labels[5, 8, 0:6] = 0           # ... open to the outside through a channel
    labels[8, 10, 9] = 6            # another organ inside cavity 2 stays
    expected = labels.copy()
    filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray((labels == 3).view(np.uint8)),
                                                         fullyConnected=False)).astype(bool)
    expected[filled & (labels == 0)] = 3
    assert (expected != labels).sum() == 8 + 12 - 1  # both cavities, without the other organ's voxel
    np.testing.assert_array_equal(largest_component_and_fill(labels.copy(), [3, 6]), expected)
