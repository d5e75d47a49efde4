"""Post-processing math on small synthetic label maps."""

import numpy as np

from KDSegmentationLib.postprocessing import keep_structures, label_volumes_ml, largest_component_and_fill


def test_largest_component_is_kept_and_holes_filled_without_touching_other_organs():
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:8, 2:10, 2:10] = 5
    labels[4, 5, 5] = 0          # hole inside the liver
    labels[4, 6, 6] = 7          # another organ enclosed by the liver: must stay
    labels[1, 15:17, 15:17] = 5  # small separate island of the liver
    labels[0:3, 15:18, 0:3] = 8
    labels[9, 19, 19] = 8        # stray voxel of the stomach
    out = largest_component_and_fill(labels.copy(), (1, 1, 1), [5, 7, 8])
    assert out[4, 5, 5] == 5
    assert out[4, 6, 6] == 7
    assert not (out[1, 15:17, 15:17] == 5).any()
    assert (out[0:3, 15:18, 0:3] == 8).all() and out[9, 19, 19] == 0


def test_keep_structures_and_volumes():
    labels = np.array([[[0, 1, 2], [5, 5, 8]]], np.uint8)
    keep_structures(labels, [5])
    assert labels.tolist() == [[[0, 0, 0], [5, 5, 0]]]
    volumes = label_volumes_ml(labels, (2.0, 1.0, 0.5), {5: "liver", 8: "stomach"})
    assert volumes == {"liver": 0.002, "stomach": 0.0}
