"""Synapse layout: our conversion of the real CT equals the reference files; reading works."""

import shutil

import h5py
import numpy as np

from kdseg_train.cli import main as train_main
from kdseg_train.data.synapse import read_synapse_split


def test_convert_writes_exactly_the_reference_synapse_files(tmp_path, shared_data):
    ts = shared_data / "ct" / "totalsegmentator_example"
    for split in ("train", "test_vol"):
        assert train_main(["convert", str(tmp_path / "synapse"), "--images", str(ts / "example_ct.nii.gz"),
                           "--labels", str(ts / "example_seg_fast_force_split.nii.gz"), "--remap",
                           "totalsegmentator", "--split", split]) == 0
    reference = shared_data / "synapse_format"
    with h5py.File(reference / "ts_example_ct_full_fastseg.npy.h5") as ref, \
            h5py.File(tmp_path / "synapse" / "test_vol_h5" / "example_ct.npy.h5") as ours:
        np.testing.assert_array_equal(ours["image"][()], ref["image"][()])
        np.testing.assert_array_equal(ours["label"][()], ref["label"][()])
    ref_slice = np.load(reference / "ts_example_ct_full_fastseg_slice086.npz")
    our_slice = np.load(tmp_path / "synapse" / "train_npz" / "example_ct_slice086.npz")
    np.testing.assert_array_equal(our_slice["image"], ref_slice["image"])
    np.testing.assert_array_equal(our_slice["label"], ref_slice["label"])
    listed = (tmp_path / "synapse" / "lists_Synapse" / "train.txt").read_text(encoding="utf-8").split()
    assert "example_ct_slice086" in listed and all(n.startswith("example_ct_slice") for n in listed)


def test_read_reference_layout(tmp_path, shared_data):
    reference = shared_data / "synapse_format"
    (tmp_path / "train_npz").mkdir()
    (tmp_path / "test_vol_h5").mkdir()
    shutil.copy(reference / "ts_example_ct_full_fastseg_slice086.npz", tmp_path / "train_npz" / "case0001_slice086.npz")
    shutil.copy(reference / "ts_example_ct_full_fastseg.npy.h5", tmp_path / "test_vol_h5" / "case0001.npy.h5")
    train = read_synapse_split(tmp_path, "train")
    assert [v.name for v in train] == ["case0001"] and train[0].image.shape == (1, 101, 122)
    assert set(np.unique(train[0].labels)) <= set(range(9))
    test = read_synapse_split(tmp_path, "test_vol")
    assert test[0].image.shape == (112, 101, 122) and 0 <= test[0].image.min() and test[0].image.max() <= 1


def test_cataract_frames_with_rgb_and_grey_masks(shared_data):
    import torch

    from kdseg_train.data.cataract import Cataract1KDataset
    from kdseg_train.models import create_model

    for split in ("train", "test"):  # RGB-stored and single-channel masks
        dataset = Cataract1KDataset(shared_data / "cataract1k", split, "instrument", img_size=64)
        assert len(dataset) == 5
        image, label = dataset[0]
        assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
        assert set(torch.unique(label).tolist()) <= {0, 1} and label.sum() > 0
    model = create_model("student-shsa-tiny", num_classes=2, img_size=64, in_channels=3).eval()
    with torch.no_grad():
        assert model(image[None]).shape == (1, 2, 64, 64)
