"""TransUNet augmentation: image and label stay aligned, branches do what they say, seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdseg_train.data import TransUNetAugmentation, build_dataset, load_ct_volume
from kdseg_train.data.slices import AxialSliceDataset


@pytest.fixture(scope="module")
def liver_slice(shared_data):
    ts = shared_data / "ct" / "totalsegmentator_example"
    volume = load_ct_volume(ts / "example_ct_sm.nii.gz", ts / "example_seg.nii.gz", "totalsegmentator")
    z = int(np.argmax((volume.labels == 5).sum(axis=(1, 2))))
    return volume.image[z], volume.labels[z].astype(np.int64)


def _label_image(label):
    return (label.astype(np.float32) / 8.0).clip(0, 1)


@pytest.mark.parametrize("branch", ["rot90_flip", "rotate"])
def test_label_follows_the_image(liver_slice, branch):
    _, label = liver_slice
    probs = {"rot90_flip_prob": 1.0} if branch == "rot90_flip" else {"rot90_flip_prob": 0.0, "rotate_prob": 1.0}
    # An image made from the label, interpolated like the label: every pixel must still agree.
    exact = TransUNetAugmentation(img_size=None, rotate_mode="nearest", seed=3, **probs)
    moved = 0
    for index in range(6):
        image, lab = exact.reseed(0, index)(_label_image(label), label)
        assert exact.last_parameters["branch"] == branch
        np.testing.assert_array_equal(torch.round(image[0] * 8).long().numpy(), lab.numpy())
        moved += int(not np.array_equal(lab.numpy(), label))
    assert moved >= 4  # the transform really changes the geometry
    # With the default bicubic image interpolation, pixels agree away from class boundaries.
    from scipy.ndimage import maximum_filter, minimum_filter

    smooth = TransUNetAugmentation(img_size=None, seed=3, **probs)
    image, lab = smooth.reseed(0, 1)(_label_image(label), label)
    lab = lab.numpy()
    interior = minimum_filter(lab, 5) == maximum_filter(lab, 5)
    assert interior.mean() > 0.8
    np.testing.assert_array_equal(np.round(image[0].numpy() * 8).astype(np.int64)[interior], lab[interior])


def test_rot90_flip_is_exactly_numpy_rot90_and_flip(liver_slice):
    image, label = liver_slice
    aug = TransUNetAugmentation(img_size=None, rot90_flip_prob=1.0, seed=11)
    for index in range(8):
        out_image, out_label = aug.reseed(2, index)(image, label)
        p = aug.last_parameters
        expected = np.flip(np.rot90(label, p["k"]), axis=p["axis"])
        np.testing.assert_array_equal(out_label.numpy(), expected)
        np.testing.assert_allclose(out_image[0].numpy(), np.flip(np.rot90(image, p["k"]), axis=p["axis"]))


def test_rotation_angle_within_range_and_branch_frequencies():
    aug = TransUNetAugmentation(img_size=None, seed=5)
    image, label = np.zeros((16, 16), np.float32), np.zeros((16, 16), np.int64)
    branches, angles = [], []
    for index in range(400):
        aug.reseed(0, index)(image, label)
        branches.append(aug.last_parameters["branch"])
        if branches[-1] == "rotate":
            angles.append(np.rad2deg(aug.last_parameters["angle_rad"]))
    counts = {b: branches.count(b) / 400 for b in ("rot90_flip", "rotate", "none")}
    assert abs(counts["rot90_flip"] - 0.5) < 0.08 and abs(counts["rotate"] - 0.25) < 0.07
    assert max(abs(a) for a in angles) <= 20.0 and max(abs(a) for a in angles) > 15.0


def test_output_types_sizes_and_value_range(liver_slice):
    image, label = liver_slice
    out_image, out_label = TransUNetAugmentation(img_size=48, seed=0).reseed(0, 0)(image, label)
    assert out_image.shape == (1, 48, 48) and out_image.dtype == torch.float32
    assert out_label.shape == (48, 48) and out_label.dtype == torch.int64
    assert 0 <= out_image.min() and out_image.max() <= 1
    assert set(torch.unique(out_label).tolist()) <= set(np.unique(label).tolist())
    rgb = np.stack([image] * 3)
    assert TransUNetAugmentation(img_size=32).reseed(0, 1)(rgb, label)[0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="label must be"):
        TransUNetAugmentation()(image, label[:10])
    with pytest.raises(ValueError, match="rotate_mode"):
        TransUNetAugmentation(rotate_mode="lanczos")


def test_same_seed_same_epoch_same_samples_regardless_of_order(shared_data, liver_slice):
    image, label = liver_slice
    ts = shared_data / "ct" / "totalsegmentator_example"
    entry = {"format": "nifti", "image": str(ts / "example_ct_sm.nii.gz"), "label": str(ts / "example_seg.nii.gz"),
             "remap": "totalsegmentator", "img_size": 40, "seed": 7}
    first, second = build_dataset(entry), build_dataset(entry)
    # Visit in different orders: every (epoch, index) sample must come out identical.
    a = [first[i] for i in range(0, 30, 3)]
    b = [second[i] for i in reversed(range(0, 30, 3))][::-1]
    for (ia, la), (ib, lb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    first.set_epoch(1)
    assert any(not torch.equal(first[i][0], a[k][0]) for k, i in enumerate(range(0, 30, 3)))
    other_seed = build_dataset({**entry, "seed": 8})
    assert any(not torch.equal(other_seed[i][0], a[k][0]) for k, i in enumerate(range(0, 30, 3)))


def test_dataloader_workers_do_not_change_the_samples(shared_data):
    from torch.utils.data import DataLoader

    ts = shared_data / "ct" / "totalsegmentator_example"
    volume = load_ct_volume(ts / "example_ct_sm.nii.gz", ts / "example_seg.nii.gz", "totalsegmentator")
    dataset = AxialSliceDataset([volume.slice_range(0.0, 0.4)], img_size=32, seed=1)
    serial = torch.cat([x for x, _ in DataLoader(dataset, batch_size=4, num_workers=0)])
    parallel = torch.cat([x for x, _ in DataLoader(dataset, batch_size=4, num_workers=2)])
    assert torch.equal(serial, parallel)
