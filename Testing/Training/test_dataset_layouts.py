"""Public dataset layouts as downloaded, built from the real TotalSegmentator example, converted voxel for voxel.

Each fixture re-creates one dataset's folder layout, file names and label ids from a crop
of ``ct/totalsegmentator_example`` (its TotalSegmentator labels are the reference), in a
temporary folder. The converted label maps must equal the reference remapped to the 8
organs exactly, voxel for voxel, on the CT's own grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from kdseg_train.cli import main as train_main
from kdseg_train.data import pairs_from_datalist, remap_labels
from kdseg_train.data.layout_convert import convert_layout
from kdseg_train.data.layouts import LAYOUTS, get_layout
from kdseg_train.data.layouts.msd import msd_label_table

ORGAN_NAMES = ["aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach"]
TS_ID = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "stomach": 6,
         "pancreas": 7, "aorta": 52}


@pytest.fixture(scope="module")
def crop(shared_data):
    """The example CT and its TotalSegmentator labels, z 60..111 (both kidneys, all 8 organs)."""
    folder = shared_data / "ct" / "totalsegmentator_example"
    ct = sitk.ReadImage(str(folder / "example_ct.nii.gz"))[:, :, 60:112]
    seg = sitk.ReadImage(str(folder / "example_seg_fast_force_split.nii.gz"))[:, :, 60:112]
    return ct, seg


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


def _relabel(seg: sitk.Image, mapping: dict, other: int = 0) -> sitk.Image:
    """TotalSegmentator ids -> another dataset's ids; unmapped non-zero ids -> ``other``."""
    source = sitk.GetArrayFromImage(seg)
    out = np.where(source > 0, other, 0).astype(np.uint8)
    for ts_id, new in mapping.items():
        out[source == ts_id] = new
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(seg)
    return image


def _expected(seg: sitk.Image, organs=tuple(range(1, 9))) -> np.ndarray:
    reference = remap_labels(sitk.GetArrayFromImage(seg), "totalsegmentator")
    return np.where(np.isin(reference, organs), reference, 0)


def _converted(out: Path, name: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels" / f"{name}.nii.gz")))


def test_every_layout_is_registered():
    assert set(LAYOUTS) == {"totalsegmentator", "amos", "btcv", "msd", "kits"}
    with pytest.raises(ValueError, match="unknown dataset layout 'amoss'; known: totalsegmentator"):
        get_layout("amoss")


def test_totalsegmentator_per_structure_files_and_meta_splits(crop, tmp_path):
    ct, seg = crop
    root = tmp_path / "Totalsegmentator_dataset"
    source = sitk.GetArrayFromImage(seg)
    for case in ("s0011", "s0012"):
        _write(ct, root / case / "ct.nii.gz")
        for structure, ts_id in dict(TS_ID, vertebrae_L1=27).items():
            mask = sitk.GetImageFromArray((source == ts_id).astype(np.uint8))
            mask.CopyInformation(seg)
            _write(mask, root / case / "segmentations" / f"{structure}.nii.gz")
    (root / "meta.csv").write_text("image_id;age;gender;institute;study_type;split\n"
                                   "s0011;61;m;A;ct abdomen;train\ns0012;70;f;B;ct abdomen;test\n")
    out = tmp_path / "converted"
    assert train_main(["convert", str(out), "--layout", "totalsegmentator", "--source", str(root)]) == 0
    expected = _expected(seg)
    assert {int(v) for v in np.unique(expected)} == set(range(9))
    for case in ("s0011", "s0012"):
        np.testing.assert_array_equal(_converted(out, case), expected)
        written = sitk.ReadImage(str(out / "labels" / f"{case}.nii.gz"))
        assert written.GetDirection() == ct.GetDirection() and written.GetOrigin() == ct.GetOrigin()
    datalist = json.loads((out / "datalist.json").read_text(encoding="utf-8"))
    assert [e["name"] for e in datalist["training"]] == ["s0011"] and [e["name"] for e in datalist["test"]] == ["s0012"]
    assert datalist["training"][0]["labeled"] == ORGAN_NAMES and datalist["licence"] == "CC BY 4.0"
    pairs = pairs_from_datalist(out / "datalist.json", "test")  # MONAI reads it; labels relative to the JSON
    assert pairs[0].label == out / "labels" / "s0012.nii.gz" and pairs[0].image == (root / "s0012" / "ct.nii.gz")


def test_totalsegmentator_missing_structure_file_is_named(crop, tmp_path):
    ct, _ = crop
    _write(ct, tmp_path / "s0001" / "ct.nii.gz")
    (tmp_path / "meta.csv").write_text("image_id;split\ns0001;train\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"segmentations lacks aorta.nii.gz, gallbladder.nii.gz"):
        get_layout("totalsegmentator").cases(tmp_path)


AMOS_IDS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 7, 7: 10, 52: 8}  # TotalSegmentator id -> AMOS id
AMOS_LABELS = {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gall bladder",
               "5": "esophagus", "6": "liver", "7": "stomach", "8": "arota", "9": "postcava", "10": "pancreas",
               "11": "right adrenal gland", "12": "left adrenal gland", "13": "duodenum", "14": "bladder",
               "15": "prostate/uterus"}


def test_amos_dataset_json_ct_cases_remapped(crop, tmp_path):
    ct, seg = crop
    root = tmp_path / "amos22"
    label = _relabel(seg, AMOS_IDS, other=13)  # all other anatomy as duodenum: must become background
    for folder, case in (("Tr", "amos_0005"), ("Va", "amos_0008"), ("Tr", "amos_0540")):
        _write(ct, root / f"images{folder}" / f"{case}.nii.gz")
        _write(label, root / f"labels{folder}" / f"{case}.nii.gz")
    meta = {"labels": AMOS_LABELS,
            "training": [{"image": "./imagesTr/amos_0005.nii.gz", "label": "./labelsTr/amos_0005.nii.gz"},
                         {"image": "./imagesTr/amos_0540.nii.gz", "label": "./labelsTr/amos_0540.nii.gz"}],
            "validation": [{"image": "./imagesVa/amos_0008.nii.gz", "label": "./labelsVa/amos_0008.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    out = tmp_path / "out"
    convert_layout("amos", root, out)
    for case in ("amos_0005", "amos_0008"):
        np.testing.assert_array_equal(_converted(out, case), _expected(seg))
    datalist = json.loads((out / "datalist.json").read_text(encoding="utf-8"))
    assert [e["name"] for e in datalist["training"]] == ["amos_0005"]  # amos_0540 is an MRI case
    assert [e["name"] for e in datalist["validation"]] == ["amos_0008"]
    meta["labels"]["10"] = "duodenum"
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match="label 10 is 'duodenum', expected 'pancreas'"):
        get_layout("amos").cases(root)


def test_btcv_raw_layout_with_transunet_split_and_synapse_export(crop, tmp_path):
    ct, seg = crop
    root = tmp_path / "RawData" / "Training"
    btcv = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 7, 7: 11, 52: 8}  # TotalSegmentator -> BTCV ids
    label = _relabel(seg, btcv, other=9)  # other anatomy as IVC
    for number in ("0001", "0005"):
        _write(ct, root / "img" / f"img{number}.nii.gz")
        _write(label, root / "label" / f"label{number}.nii.gz")
    out = tmp_path / "synapse"
    assert train_main(["convert", str(out), "--layout", "btcv", "--source", str(tmp_path / "RawData"),
                       "--synapse"]) == 0
    for case in ("case0001", "case0005"):
        np.testing.assert_array_equal(_converted(out, case), _expected(seg))
    datalist = json.loads((out / "datalist.json").read_text(encoding="utf-8"))
    assert [e["name"] for e in datalist["test"]] == ["case0001"]  # TransUNet test case
    assert [e["name"] for e in datalist["training"]] == ["case0005"]
    assert (out / "test_vol_h5" / "case0001.npy.h5").is_file()
    assert len(list((out / "train_npz").glob("case0005_slice*.npz"))) == ct.GetSize()[2]
    assert (out / "lists_Synapse" / "train.txt").read_text(encoding="utf-8").split()[0] == "case0005_slice000"


@pytest.mark.parametrize("task,organ,labels", [
    ("Task03_Liver", 5, {"0": "background", "1": "liver", "2": "cancer"}),
    ("Task07_Pancreas", 6, {"0": "background", "1": "pancreas", "2": "cancer"}),
    ("Task09_Spleen", 7, {"0": "background", "1": "spleen"}),
])
def test_decathlon_task_labels_only_its_organ_with_lesions_inside(crop, tmp_path, task, organ, labels):
    ct, seg = crop
    root = tmp_path / task
    stem = task.split("_")[1].lower()
    ts_organ = {5: 5, 6: 7, 7: 1}[organ]
    source = sitk.GetArrayFromImage(seg)
    label = (source == ts_organ).astype(np.uint8)
    if "2" in labels:  # a "tumour" in the organ's lower half: still the organ
        zs = np.nonzero(label)[0]
        label[(label == 1) & (np.arange(label.shape[0])[:, None, None] < np.median(zs))] = 2
        assert (label == 2).any()
    image = sitk.GetImageFromArray(label)
    image.CopyInformation(seg)
    _write(ct, root / "imagesTr" / f"{stem}_3.nii.gz")
    _write(image, root / "labelsTr" / f"{stem}_3.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": task.split("_")[1], "modality": {"0": "CT"}, "labels": labels,
        "training": [{"image": f"./imagesTr/{stem}_3.nii.gz", "label": f"./labelsTr/{stem}_3.nii.gz"}],
        "test": [f"./imagesTs/{stem}_9.nii.gz"]}))
    out = tmp_path / "out"
    convert_layout("msd", root, out)
    np.testing.assert_array_equal(_converted(out, f"{stem}_3"), _expected(seg, (organ,)))
    datalist = json.loads((out / "datalist.json").read_text(encoding="utf-8"))
    assert datalist["training"][0]["labeled"] == [ORGAN_NAMES[organ - 1]]


def test_decathlon_task_without_one_of_our_organs_is_refused(tmp_path):
    with pytest.raises(ValueError, match="name 0 of the organs"):
        msd_label_table(tmp_path / "dataset.json", {"0": "background", "1": "colon cancer primaries"})
    with pytest.raises(ValueError, match=r"label 2 \('vessel'\) is neither the organ nor a lesion"):
        msd_label_table(tmp_path / "dataset.json", {"0": "background", "1": "liver", "2": "vessel"})


def test_kits_kidney_split_at_the_midline_in_physical_space(crop, tmp_path):
    """KiTS19 stores the axial axis first: the fixture does too, so only physical space gives left/right."""
    ct, seg = crop
    source = sitk.GetArrayFromImage(seg)
    kits = np.zeros(source.shape, np.uint8)
    kits[(source == 2) | (source == 3)] = 1  # one "kidney" label for both sides
    right_z = np.nonzero(source == 2)[0]
    kits[(source == 2) & (np.arange(source.shape[0])[:, None, None] < np.percentile(right_z, 30))] = 2  # tumour
    left_z = np.nonzero(source == 3)[0]
    kits[(source == 3) & (np.arange(source.shape[0])[:, None, None] > np.percentile(left_z, 80))] = 3  # cyst
    label = sitk.GetImageFromArray(kits)
    label.CopyInformation(seg)
    order = [2, 1, 0]  # index axes (x, y, z) -> (z, y, x): the physical positions stay the same
    case = tmp_path / "kits21" / "data" / "case_00042"
    _write(sitk.PermuteAxes(ct, order), case / "imaging.nii.gz")
    _write(sitk.PermuteAxes(label, order), case / "segmentation.nii.gz")
    _write(sitk.PermuteAxes(ct, order), tmp_path / "kits21" / "data" / "case_00300" / "imaging.nii.gz")  # test case
    out = tmp_path / "out"
    convert_layout("kits", tmp_path / "kits21", out)
    written = sitk.ReadImage(str(out / "labels" / "case_00042.nii.gz"))
    assert written.GetSize() == tuple(reversed(ct.GetSize()))  # on the KiTS file's own grid
    back = sitk.GetArrayFromImage(sitk.PermuteAxes(written, order))
    np.testing.assert_array_equal(back, _expected(seg, (3, 4)))
    datalist = json.loads((out / "datalist.json").read_text(encoding="utf-8"))
    assert [e["name"] for e in datalist["training"]] == ["case_00042"]
    assert datalist["training"][0]["labeled"] == ["kidney_left", "kidney_right"]


def test_conversion_skips_done_cases_and_reports_a_wrong_source(crop, tmp_path, capsys):
    ct, seg = crop
    root = tmp_path / "Training"
    _write(ct, root / "img" / "img0007.nii.gz")
    _write(_relabel(seg, {5: 6}), root / "label" / "label0007.nii.gz")
    out = tmp_path / "out"
    convert_layout("btcv", root, out)
    stamp = (out / "labels" / "case0007.nii.gz").stat().st_mtime_ns
    lines = []
    convert_layout("btcv", root, out, report=lines.append)
    assert (out / "labels" / "case0007.nii.gz").stat().st_mtime_ns == stamp and "exists, kept" in lines[0]
    assert train_main(["convert", str(out), "--layout", "amos", "--source", str(root)]) == 2
    assert "dataset.json does not exist" in capsys.readouterr().err
    assert train_main(["convert", str(out), "--layout", "btcv"]) == 2
    assert "needs --source" in capsys.readouterr().err
