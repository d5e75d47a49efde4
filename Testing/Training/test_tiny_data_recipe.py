"""Recipe v2 data path on real CT: model grid identical to the Lib, augmentation moves image, label and
cached logits together, class-balanced sampling is balanced and a pure function of (seed, step, rank)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from KDSegmentationLib.inference.model_grid import ModelGrid
from kdseg_train.balanced_batch_plan import BalancedBatchPlan, balanced_slice_weights
from kdseg_train.data.ct_volumes import load_ct_volume
from kdseg_train.data.grid_slices import GridSliceDataset
from kdseg_train.data.tiny_data_augmentation import TinyDataAugmentation

S = 64  # small model grid: fast tests; 64 px of 6 mm cover the 384 mm of the shipped 128 x 3 mm grid
SPACING = 6.0


@pytest.fixture(scope="module")
def volumes(shared_data):
    ts = shared_data / "ct" / "totalsegmentator_example"
    dicom = shared_data / "ct" / "totalsegmentator_dicom"
    example = load_ct_volume(ts / "example_ct.nii.gz", ts / "example_seg_fast_force_split.nii.gz",
                             "totalsegmentator").slice_range(0.55, 0.85)
    patient = load_ct_volume(dicom / "example_ct_dicom", dicom / "example_seg_dicom.nii.gz",
                             "totalsegmentator").slice_range(0.0, 0.5)
    return [example, patient]


def _dataset(volumes, augment=True, seed=7):
    return GridSliceDataset(volumes, ModelGrid(S, S, SPACING), TinyDataAugmentation(S, augment, seed=seed),
                            canvas_margin=16)


def test_unaugmented_item_is_exactly_the_lib_model_input(volumes):
    dataset = _dataset(volumes, augment=False)
    grid = ModelGrid(S, S, SPACING)
    for index in (3, len(dataset) - 2):  # one slice of each patient (3 mm NIfTI, 0.98 mm DICOM)
        name, z = dataset.index[index]
        volume = next(v for v in volumes if v.name == name)
        image, label = dataset[index]
        expected = grid.to_model(volume.image[z], volume.spacing_zyx[1:])
        np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-5)
        np.testing.assert_array_equal(label.numpy(), grid.labels_to_model(volume.labels[z], volume.spacing_zyx[1:]))


def test_organ_size_in_model_pixels_follows_millimetres_not_field_of_view(volumes):
    """The DICOM patient (500 mm field) and the NIfTI patient (366 mm) both get 6 mm model pixels: an organ's
    area in model pixels times 36 mm^2 equals its area on the slice in mm^2."""
    dataset = _dataset(volumes, augment=False)
    labels = dataset.model_labels()
    for volume in volumes:
        z = int(np.argmax((volume.labels == 5).sum(axis=(1, 2))))
        index = dataset.index.index((volume.name, z))
        liver_mm2 = (volume.labels[z] == 5).sum() * volume.spacing_zyx[1] * volume.spacing_zyx[2]
        assert liver_mm2 > 2000
        assert (labels[index] == 5).sum() * SPACING ** 2 == pytest.approx(liver_mm2, rel=0.1)


def test_augmentation_moves_image_label_and_logits_together(volumes):
    """Cached 'logits' that are a one-hot of the label must, after the same augmentation, still agree with the
    augmented label wherever they are valid; and the augmented image keeps its organ intensities."""
    dataset = _dataset(volumes)
    labels = dataset.model_labels().astype(np.int64)
    onehot = (np.arange(9)[None, :, None, None] == np.where(labels == 255, 0, labels)[:, None]).astype(np.float32)
    dataset.attach_logits(onehot * 10.0)
    moved_any, changed = 0, []
    foreground = (labels % 255 > 0).sum(axis=(1, 2))
    for key, index in enumerate(np.argsort(foreground)[-4:]):
        dataset.set_epoch(key)
        image, label, logits, valid = dataset[index]
        params = dataset.transform.last_parameters
        moved_any += params["zoom"] != 1.0
        assert image.shape == (1, S, S) and label.shape == (S, S) and logits.shape == (9, S, S)
        assert valid.float().mean() > 0.5
        agree = (logits.argmax(0) == label) | (label == 255)
        # Bilinear logits and nearest labels differ only on class boundaries.
        assert agree[valid].float().mean() > 0.93, params
        changed.append((label.numpy() != dataset.model_labels()[index]).mean())
    assert moved_any == 4
    assert np.mean(changed) > 0.01  # not the identity: the labels moved


def test_augmentation_is_a_pure_function_of_seed_key_and_index(volumes):
    a, b = _dataset(volumes, seed=3), _dataset(volumes, seed=3)
    a.set_epoch(11)
    first = a[7]
    a.set_epoch(12)
    a[7]  # another draw in between must not matter
    a.set_epoch(11)
    b.set_epoch(11)
    for x, y, z in zip(first, a[7], b[7]):
        assert torch.equal(x, y) and torch.equal(x, z)
    b.set_epoch(13)
    assert not torch.equal(first[0], b[7][0])


def test_augmentation_ranges_and_no_flip(volumes):
    aug = TinyDataAugmentation(S, seed=5)
    zooms, angles = [], []
    for key in range(200):
        aug.reseed(key, 0)
        aug.randomize()
        p = aug.last_parameters
        zooms.append(p["zoom"])
        angles.append(p["angle_rad"])
    assert min(zooms) < 0.8 and max(zooms) > 1.2 and 0.75 <= min(zooms) and max(zooms) <= 1.25
    assert np.rad2deg(max(np.abs(angles))) <= 15.0
    # No left-right flip: the left kidney stays on the patient's left (larger x in LPS columns).
    dataset = _dataset(volumes)
    kidney_slices = [i for i in range(len(dataset)) if (dataset.model_labels()[i] == 3).any()
                     and (dataset.model_labels()[i] == 4).any()]
    assert kidney_slices
    for key, index in enumerate(kidney_slices[:6]):
        dataset.set_epoch(key)
        _, label = dataset[index]
        left_x = np.nonzero(label.numpy() == 3)[1].mean()
        right_x = np.nonzero(label.numpy() == 4)[1].mean()
        assert left_x > right_x


def test_class_balanced_sampling_shows_small_organs_as_often_as_the_liver(volumes):
    dataset = _dataset(volumes, augment=False)
    presence = dataset.organ_presence(9)
    weights = balanced_slice_weights(presence)
    seen = weights @ presence  # probability that a drawn slice shows each organ
    uniform = presence.mean(axis=0)
    liver = 4  # organ 5 is column 4
    present = presence.any(axis=0)
    assert seen[present].min() >= 1.0 / (present.sum() + 1) - 1e-9
    # Uniform sampling shows the rarest organ far less often than the liver; balanced brings it close.
    rarest = int(np.argmin(np.where(present, uniform, np.inf)))
    assert uniform[rarest] / uniform[liver] < 0.5
    assert seen[rarest] / seen[liver] > 0.4
    assert seen[rarest] / seen[liver] > 1.5 * uniform[rarest] / uniform[liver]
    # Empirical check of the plan against the weights.
    plan = BalancedBatchPlan(presence, 8, seed=1, max_steps=400)
    drawn = np.array([i for batch in plan for _, i in batch])
    np.testing.assert_allclose(presence[drawn].mean(axis=0), seen, atol=0.04)


def test_balanced_plan_is_pure_in_seed_step_and_rank():
    presence = np.random.default_rng(0).random((30, 8)) < 0.3
    whole = BalancedBatchPlan(presence, 8, seed=4, max_steps=10)
    resumed = BalancedBatchPlan(presence, 8, seed=4, start_step=6, max_steps=10)
    assert list(whole)[6:] == list(resumed)
    ranks = [list(BalancedBatchPlan(presence, 8, seed=4, max_steps=10, rank=r, world_size=2)) for r in (0, 1)]
    for step, batch in enumerate(whole):
        assert ranks[0][step] + ranks[1][step] == batch
    keys = [key for batch in whole for key, _ in batch]
    assert len(set(keys)) == len(keys)  # each sample its own augmentation, even for a slice drawn twice
    with pytest.raises(ValueError, match="divisible"):
        BalancedBatchPlan(presence, 7, seed=4, world_size=2)
