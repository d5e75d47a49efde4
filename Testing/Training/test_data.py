"""Training data on the real files: remaps, canonical CT/DICOM loading, Synapse layout, Cataract-1K, converter."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.inference.preprocessing import window_to_unit
from kdseg_train.data import (IGNORE_INDEX, Cataract1KDataset, NiftiVolumeDataset, SynapseSliceDataset,
                              SynapseVolumeDataset, build_dataset, load_ct_volume, pairs_from_datalist,
                              pairs_from_folders, remap_labels)
from kdseg_train.data.cataract import rasterise_supervisely
from kdseg_train.data.convert import add_arguments, run
from kdseg_train.data.label_maps import BTCV_TO_SYNAPSE, TOTALSEGMENTATOR_TO_SYNAPSE


@pytest.fixture(scope="module")
def ts(shared_data):
    return shared_data / "ct" / "totalsegmentator_example"


# ---------------------------------------------------------------- label maps

def test_remap_tables_hand_computed():
    btcv = np.array([[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12, 13]])
    np.testing.assert_array_equal(remap_labels(btcv, BTCV_TO_SYNAPSE),
                                  [[0, 7, 4, 3, 2, 0, 5], [8, 1, 0, 0, 6, 0, 0]])
    total = np.array([0, 1, 2, 3, 4, 5, 6, 7, 52, 53, 90])
    np.testing.assert_array_equal(remap_labels(total, "totalsegmentator"), [0, 7, 4, 3, 2, 5, 8, 6, 1, 0, 0])
    assert set(TOTALSEGMENTATOR_TO_SYNAPSE.values()) == set(range(1, 9))


def test_unlabeled_organs_make_background_unknown_but_not_other_anatomy():
    # dcmqi labels: 1 liver, 2 spine. Background might be an unannotated organ; spine is known not to be.
    source = np.array([0, 1, 2, 0])
    out = remap_labels(source, {1: 5}, ignore_index=IGNORE_INDEX, unlabeled=[1, 2, 3, 4, 6, 7, 8])
    np.testing.assert_array_equal(out, [IGNORE_INDEX, 5, 0, IGNORE_INDEX])
    with pytest.raises(ValueError, match="non-integer"):
        remap_labels(np.array([0.5]), "btcv")
    with pytest.raises(ValueError, match="unknown label remap"):
        remap_labels(source, "btvc")
    with pytest.raises(ValueError, match="non-negative"):
        remap_labels(np.array([-1]), "btcv")


# ---------------------------------------------------------------- CT volumes

def test_nifti_pair_is_canonical_windowed_and_remapped(ts):
    volume = load_ct_volume(ts / "example_ct_sm.nii.gz", ts / "example_seg.nii.gz", "totalsegmentator")
    image = sitk.ReadImage(str(ts / "example_ct_sm.nii.gz"))
    expected = window_to_unit(sitk.GetArrayFromImage(to_canonical(image)), (-125, 275))
    np.testing.assert_array_equal(volume.image, expected)
    seg = sitk.GetArrayFromImage(to_canonical(sitk.ReadImage(str(ts / "example_seg.nii.gz"))))
    np.testing.assert_array_equal(volume.labels, remap_labels(seg, "totalsegmentator"))
    assert volume.spacing_zyx == (3.0, 3.0, 3.0) and volume.image.shape == (30, 101, 122)
    assert (volume.labels == 5).sum() > 1000  # liver present


def test_dicom_series_label_resampled_in_physical_space(shared_data):
    folder = shared_data / "ct" / "totalsegmentator_dicom"
    volume = load_ct_volume(folder / "example_ct_dicom", folder / "example_seg_dicom.nii.gz", "totalsegmentator")
    assert volume.image.shape == (20, 512, 512) and volume.spacing_zyx == pytest.approx((2.0, 0.9765625, 0.9765625))
    present = {int(v) for v in np.unique(volume.labels)}
    assert {5, 7, 8, 6, 1} <= present and not present & {2, 3, 4}  # README: kidneys/gallbladder outside
    # Independent check: look every sampled voxel up in the label file through physical coordinates.
    image = to_canonical(_read_dicom(folder / "example_ct_dicom"))
    seg = sitk.ReadImage(str(folder / "example_seg_dicom.nii.gz"))
    seg_array = sitk.GetArrayViewFromImage(seg)
    rng = np.random.default_rng(0)
    liver = np.argwhere(volume.labels == 5)
    for z, y, x in liver[rng.choice(len(liver), 50, replace=False)]:
        point = image.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
        i, j, k = seg.TransformPhysicalPointToIndex(point)
        assert seg_array[k, j, i] == 5  # TotalSegmentator id 5 = liver
    # The label file's own index order differs (y reversed), so index-wise reading would be wrong.
    raw = remap_labels(sitk.GetArrayFromImage(seg), "totalsegmentator")
    assert raw.shape == volume.labels.shape and not np.array_equal(raw, volume.labels)


def _read_dicom(folder):
    from KDSegmentationLib.imaging.image_files import read_image

    return read_image(folder)


def test_label_outside_the_image_is_refused(ts, tmp_path):
    seg = sitk.ReadImage(str(ts / "example_seg.nii.gz"))
    seg.SetOrigin(tuple(o + 5000.0 for o in seg.GetOrigin()))
    sitk.WriteImage(seg, str(tmp_path / "moved.nii.gz"))
    with pytest.raises(ValueError, match="does not overlap"):
        load_ct_volume(ts / "example_ct_sm.nii.gz", tmp_path / "moved.nii.gz", "totalsegmentator")


def test_partially_covering_label_marks_the_rest_unknown(ts, tmp_path):
    # The 30-slice label on the 112-slice CT: slices it does not cover are unknown, not background.
    volume = load_ct_volume(ts / "example_ct.nii.gz", ts / "example_seg.nii.gz", "totalsegmentator")
    per_slice_ignored = (volume.labels == IGNORE_INDEX).all(axis=(1, 2))
    assert per_slice_ignored.sum() == 112 - 30 and not (volume.labels[~per_slice_ignored] == IGNORE_INDEX).any()


# ---------------------------------------------------------------- pairs and build_dataset

def test_folder_pairs_datalist_and_build_dataset(ts, tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "imagesTr" / "img0001.nii.gz").symlink_to(ts / "example_ct_sm.nii.gz")
    (tmp_path / "labelsTr" / "label0001.nii.gz").symlink_to(ts / "example_seg.nii.gz")
    pairs = pairs_from_folders(tmp_path / "imagesTr", tmp_path / "labelsTr")
    assert [(p.name, p.label.name) for p in pairs] == [("img0001", "label0001.nii.gz")]
    (tmp_path / "btcv.json").write_text(json.dumps({"training": [
        {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}]}), encoding="utf-8")
    assert pairs_from_datalist(tmp_path / "btcv.json")[0].image == tmp_path / "imagesTr" / "img0001.nii.gz"

    train = build_dataset({"format": "nifti", "datalist": str(tmp_path / "btcv.json"), "remap": "totalsegmentator",
                           "img_size": 32, "holdout": [0.8, 1.0], "unlabeled": [2]})
    assert len(train) == 24  # 30 slices minus the held-out 6
    image, label = train[3]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32 and label.dtype == torch.int64
    assert 0 <= image.min() and image.max() <= 1
    val = build_dataset({"format": "nifti", "images": str(tmp_path / "imagesTr"), "labels": str(tmp_path / "labelsTr"),
                         "remap": "totalsegmentator", "items": "volumes", "slices": [0.8, 1.0]})
    assert isinstance(val, NiftiVolumeDataset)
    case = next(iter(val))
    assert case.image.shape[0] == 6 and case.first_slice == 24 and case.spacing_zyx == (3.0, 3.0, 3.0)

    (tmp_path / "imagesTr" / "img0002.nii.gz").symlink_to(ts / "example_ct_sm.nii.gz")
    with pytest.raises(ValueError, match="img0002.nii.gz"):
        pairs_from_folders(tmp_path / "imagesTr", tmp_path / "labelsTr")
    with pytest.raises(ValueError, match="unknown key"):
        build_dataset({"format": "nifti", "image": "x", "label": "y", "remapp": "btcv"})
    with pytest.raises(ValueError, match="format must be one of"):
        build_dataset({"format": "nnunet"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset({"format": "synapse", "root": str(tmp_path / "nowhere")})


# ---------------------------------------------------------------- Synapse layout

@pytest.fixture()
def synapse_root(tmp_path, shared_data):
    reference = shared_data / "synapse_format"
    for folder in ("train_npz", "test_vol_h5", "lists_Synapse"):
        (tmp_path / folder).mkdir()
    shutil.copy(reference / "ts_example_ct_full_fastseg_slice086.npz", tmp_path / "train_npz" / "case0001_slice086.npz")
    shutil.copy(reference / "ts_example_ct_full_fastseg.npy.h5", tmp_path / "test_vol_h5" / "case0001.npy.h5")
    (tmp_path / "lists_Synapse" / "train.txt").write_text("case0001_slice086\n", encoding="utf-8")
    (tmp_path / "lists_Synapse" / "test_vol.txt").write_text("case0001\n", encoding="utf-8")
    return tmp_path


def test_synapse_slices_and_volumes(synapse_root, shared_data):
    raw = SynapseSliceDataset(synapse_root)
    image, label = raw[0]
    reference = np.load(shared_data / "synapse_format" / "ts_example_ct_full_fastseg_slice086.npz")
    np.testing.assert_array_equal(image[0].numpy(), reference["image"])
    np.testing.assert_array_equal(label.numpy(), reference["label"].astype(np.int64))
    resized = build_dataset({"format": "synapse", "root": str(synapse_root), "img_size": 64, "augment": False})
    image, label = resized[0]
    assert image.shape == (1, 64, 64) and label.shape == (64, 64)
    volumes = build_dataset({"format": "synapse", "root": str(synapse_root), "split": "test_vol"})
    assert isinstance(volumes, SynapseVolumeDataset)
    case, image, label = volumes[0]
    with h5py.File(shared_data / "synapse_format" / "ts_example_ct_full_fastseg.npy.h5") as ref:
        np.testing.assert_array_equal(image, ref["image"][()])
        np.testing.assert_array_equal(label, ref["label"][()].astype(np.int64))
    assert case == "case0001" and image.dtype == np.float32 and label.dtype == np.int64 and image.shape[0] == 112
    # The slice file is slice 86 of that volume.
    np.testing.assert_array_equal(reference["image"], image[86])


def test_synapse_list_naming_a_missing_file_is_an_error(synapse_root):
    (synapse_root / "lists_Synapse" / "train.txt").write_text("case0001_slice086\ncase0002_slice001\n")
    with pytest.raises(FileNotFoundError, match="case0002_slice001.npz"):
        SynapseSliceDataset(synapse_root)


def test_convert_matches_the_reference_synapse_files(ts, tmp_path, shared_data, capsys):
    import argparse

    parser = add_arguments(argparse.ArgumentParser())
    for split in ("train", "test_vol"):
        args = parser.parse_args([str(tmp_path / "out"), "--images", str(ts / "example_ct.nii.gz"), "--labels",
                                  str(ts / "example_seg_fast_force_split.nii.gz"), "--remap", "totalsegmentator",
                                  "--split", split])
        assert run(args) == 0
    reference = shared_data / "synapse_format"
    with h5py.File(reference / "ts_example_ct_full_fastseg.npy.h5") as ref, \
            h5py.File(tmp_path / "out" / "test_vol_h5" / "example_ct.npy.h5") as ours:
        np.testing.assert_array_equal(ours["image"][()], ref["image"][()])
        np.testing.assert_array_equal(ours["label"][()], ref["label"][()])
    ours = np.load(tmp_path / "out" / "train_npz" / "example_ct_slice086.npz")
    ref = np.load(reference / "ts_example_ct_full_fastseg_slice086.npz")
    np.testing.assert_array_equal(ours["image"], ref["image"])
    np.testing.assert_array_equal(ours["label"], ref["label"])
    assert len(SynapseSliceDataset(tmp_path / "out")) == 112  # every slice, as TransUNet's training set
    # Re-running does not duplicate list entries; bad input exits non-zero with one message and writes nothing.
    assert run(parser.parse_args([str(tmp_path / "out"), "--images", str(ts / "example_ct.nii.gz"), "--labels",
                                  str(ts / "example_seg_fast_force_split.nii.gz"), "--remap",
                                  "totalsegmentator", "--split", "test_vol"])) == 0
    assert (tmp_path / "out" / "lists_Synapse" / "test_vol.txt").read_text().split() == ["example_ct"]
    capsys.readouterr()
    code = run(parser.parse_args([str(tmp_path / "bad"), "--images", str(ts / "example_ct.nii.gz"), "--labels",
                                  str(ts / "missing.nii.gz")]))
    assert code != 0 and "missing.nii.gz does not exist" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- Cataract-1K

def test_cataract_rgb_and_grey_masks(shared_data):
    for split in ("train", "test"):  # train masks are RGB-stored, test masks single-channel
        dataset = Cataract1KDataset(shared_data / "cataract1k", split, "instrument", img_size=64)
        image, label = dataset[0]
        full_image, full_label = dataset.read(0)
        assert full_image.shape == (3, 768, 1024) and full_label.shape == (768, 1024)
        assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
        assert set(torch.unique(label).tolist()) == {0, 1}
    with pytest.raises(ValueError, match="binary masks only hold instruments"):
        Cataract1KDataset(shared_data / "cataract1k", "train", "anatomy_instrument", mask_encoding="binary").read(0)


def test_cataract_multiclass_masks_and_supervisely(shared_data, tmp_path):
    frame = sorted((shared_data / "cataract1k" / "train" / "images").glob("*.png"))[0]
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "labels").mkdir()
    shutil.copy(frame, tmp_path / "train" / "images" / frame.name)
    from PIL import Image

    mask = np.zeros((768, 1024), np.uint8)
    mask[100:600, 200:800] = 1  # iris
    mask[250:450, 400:600] = 2  # pupil
    mask[300:400, 450:550] = 3  # lens
    mask[500:520, 100:900] = 8  # instrument type 4 of the dataset's script
    Image.fromarray(mask).save(tmp_path / "train" / "labels" / frame.name)
    anatomy = Cataract1KDataset(tmp_path, "train", "anatomy_instrument").read(0)[1]
    np.testing.assert_array_equal(anatomy, np.minimum(mask, 4))
    instrument = Cataract1KDataset(tmp_path, "train", "instrument", mask_encoding="multiclass").read(0)[1]
    np.testing.assert_array_equal(instrument, mask >= 4)
    with pytest.raises(ValueError, match="mask_encoding: multiclass"):
        Cataract1KDataset(tmp_path, "train", "instrument").read(0)

    # Published layout: <case>/img/*.png + <case>/ann/*.png.json with polygons.
    (tmp_path / "case_1" / "img").mkdir(parents=True)
    (tmp_path / "case_1" / "ann").mkdir()
    shutil.copy(frame, tmp_path / "case_1" / "img" / "f1.png")
    square = lambda x0, y0, x1, y1: [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]  # noqa: E731
    ann = {"size": {"height": 768, "width": 1024}, "objects": [
        {"classTitle": "Spatula", "points": {"exterior": square(0, 0, 9, 9)}},
        {"classTitle": "Pupil", "points": {"exterior": square(20, 20, 39, 39)}},
        {"classTitle": "Cornea", "points": {"exterior": square(10, 10, 49, 49)}}]}
    (tmp_path / "case_1" / "ann" / "f1.png.json").write_text(json.dumps(ann), encoding="utf-8")
    raster = rasterise_supervisely(tmp_path / "case_1" / "ann" / "f1.png.json")
    assert raster[5, 5] == 4 + 3 and raster[30, 30] == 2 and raster[15, 15] == 1 and raster[60, 60] == 0
    dataset = build_dataset({"format": "cataract1k", "root": str(tmp_path), "cases": ["case_1"],
                             "task": "anatomy_instrument", "img_size": 32})
    assert dataset.read(0)[1][5, 5] == 4 and dataset[0][0].shape == (3, 32, 32)
