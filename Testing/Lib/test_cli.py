"""The kdseg command end to end on real files, and every bad input failing cleanly."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.cli import main
from KDSegmentationLib.errors import EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT


def _run(capsys, registry, *args):
    code = main(["--registry", str(registry), *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sample_segmentation_writes_label_map_volumes_and_timings(capsys, plumbing_registry, tmp_path, example_ct):
    out, vol = tmp_path / "seg.nii.gz", tmp_path / "volumes.json"
    code, stdout, stderr = _run(capsys, plumbing_registry, "segment", "--sample", "-o", out, "--volumes-json", vol)
    assert code == 0, stderr
    seg = sitk.ReadImage(str(out))
    assert seg.GetSize() == example_ct.GetSize() and seg.GetDirection() == example_ct.GetDirection()
    assert seg.GetOrigin() == example_ct.GetOrigin() and seg.GetSpacing() == example_ct.GetSpacing()
    data = json.loads(vol.read_text(encoding="utf-8"))
    assert set(data["volumes_ml"]) == {"aorta", "gallbladder", "kidney_left", "kidney_right", "liver",
                                       "pancreas", "spleen", "stomach"}
    assert "Timing (s): read" in stdout and "infer" in stdout and "write" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "seg.nii.gz", "volumes.json"]


def test_real_dicom_folder_and_structure_subset(capsys, plumbing_registry, tmp_path, shared_data):
    out = tmp_path / "seg.nrrd"
    folder = shared_data / "ct" / "totalsegmentator_dicom" / "example_ct_dicom"
    code, stdout, stderr = _run(capsys, plumbing_registry, "segment", folder, "-o", out,
                                "--structures", "liver,spleen", "--no-postprocess", "--batch-size", "4")
    assert code == 0, stderr
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert labels.shape == (20, 512, 512)
    assert set(np.unique(labels)) <= {0, 5, 7}


def _write(image, path):
    sitk.WriteImage(image, str(path))
    return path


def _bad_inputs(tmp_path, shared_data):
    ct = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes((shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz").read_bytes()[:5000])
    empty = tmp_path / "empty_dicom"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here", encoding="utf-8")
    several = tmp_path / "two_series"
    shutil.copytree(shared_data / "ct" / "dcmqi_3slice" / "ct-3slice", several)
    for f in list((shared_data / "ct" / "totalsegmentator_dicom" / "example_ct_dicom").iterdir())[:3]:
        shutil.copy(f, several / f.name)
    arr = sitk.GetArrayFromImage(ct).astype(np.float32)
    nan = arr.copy()
    nan[3, 10, 10] = np.nan
    nan_image = sitk.GetImageFromArray(nan)
    rgb = sitk.Compose([ct[:, :, 5]] * 3)
    four_d = sitk.JoinSeries([ct, ct])
    return {
        "missing": (tmp_path / "nope.nii.gz", "does not exist"),
        "corrupt": (corrupt, "Cannot read"),
        "2D": (_write(ct[:, :, 5], tmp_path / "slice.nii.gz"), "2D image"),
        "4D": (_write(four_d, tmp_path / "four.nii.gz"), "4D image"),
        "RGB": (_write(sitk.Cast(rgb, sitk.sitkVectorUInt8), tmp_path / "rgb.nrrd"), "components per voxel"),
        "empty DICOM folder": (empty, "No DICOM series"),
        "several series": (several, "Choose one with --series"),
        "constant": (_write(sitk.Image(64, 64, 20, sitk.sitkInt16) - 1000, tmp_path / "const.nii.gz"), "constant"),
        "NaN": (_write(nan_image, tmp_path / "nan.mha"), "NaN"),
    }


@pytest.mark.parametrize("case", ["missing", "corrupt", "2D", "4D", "RGB", "empty DICOM folder", "several series",
                                  "constant", "NaN"])
def test_bad_input_fails_with_one_clear_message_and_no_output(case, capsys, plumbing_registry, tmp_path, shared_data):
    path, expected = _bad_inputs(tmp_path, shared_data)[case]
    out = tmp_path / "out" / "seg.nii.gz"
    out.parent.mkdir()
    code, stdout, stderr = _run(capsys, plumbing_registry, "segment", path, "-o", out)
    assert code == EXIT_INPUT
    assert expected in stderr and stderr.startswith("error: ")
    assert len(stderr.strip().splitlines()) == 1
    assert list(out.parent.iterdir()) == []


def test_several_series_lists_uids_and_series_option_selects_one(capsys, plumbing_registry, tmp_path, shared_data):
    path, _ = _bad_inputs(tmp_path, shared_data)["several series"]
    code, _, stderr = _run(capsys, plumbing_registry, "segment", path, "-o", tmp_path / "x.nii.gz")
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    assert code == EXIT_INPUT and len(uids) == 2
    assert all(uid in stderr for uid in uids)
    dcmqi_uid = [u for u in uids if len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), u)) == 3][0]
    code, _, stderr = _run(capsys, plumbing_registry, "segment", path, "--series", dcmqi_uid, "-o", tmp_path / "x.nii.gz")
    assert code == 0, stderr
    assert sitk.ReadImage(str(tmp_path / "x.nii.gz")).GetSize() == (512, 512, 3)


def test_non_ct_intensities_warn(capsys, plumbing_registry, tmp_path, shared_data):
    ct = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"))
    scaled = sitk.RescaleIntensity(sitk.Cast(ct, sitk.sitkFloat32), 0.0, 1.0)
    path = _write(scaled, tmp_path / "normalised.nii.gz")
    code, _, stderr = _run(capsys, plumbing_registry, "segment", path, "-o", tmp_path / "seg.nii.gz")
    assert code == 0
    assert "not Hounsfield units" in stderr


@pytest.mark.parametrize("args, code, expected", [
    (["--model", "nope"], EXIT_MODEL, "Unknown model id 'nope'"),
    (["--structures", "liver,heart"], EXIT_MODEL, "Unknown structure 'heart'"),
])
def test_unknown_model_or_structure(capsys, plumbing_registry, tmp_path, args, code, expected):
    out = tmp_path / "seg.nii.gz"
    result, _, stderr = _run(capsys, plumbing_registry, "segment", "--sample", "-o", out, *args)
    assert result == code and expected in stderr
    assert not out.exists()


@pytest.mark.parametrize("name, expected", [("missing_dir/seg.nii.gz", "does not exist"),
                                            ("seg.png", "unsupported extension")])
def test_unwritable_output(capsys, plumbing_registry, tmp_path, name, expected):
    code, _, stderr = _run(capsys, plumbing_registry, "segment", "--sample", "-o", tmp_path / name)
    assert code == EXIT_OUTPUT and expected in stderr


def test_models_listing_and_exit_codes_of_the_installed_command(plumbing_registry, tmp_path):
    listing = subprocess.run([sys.executable, "-m", "KDSegmentationLib.cli", "--registry", str(plumbing_registry),
                              "models"], capture_output=True, text=True)
    assert listing.returncode == 0 and "untrained-plumbing (default)" in listing.stdout
    assert "available offline" in listing.stdout
    missing = subprocess.run([sys.executable, "-m", "KDSegmentationLib.cli", "--registry", str(plumbing_registry),
                              "segment", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "o.nii.gz")],
                             capture_output=True, text=True)
    assert missing.returncode == EXIT_INPUT and not (tmp_path / "o.nii.gz").exists()
    usage = subprocess.run([sys.executable, "-m", "KDSegmentationLib.cli", "segment"], capture_output=True, text=True)
    assert usage.returncode == 2
