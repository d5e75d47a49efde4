"""The kdseg command end to end on real files, and every bad input failing cleanly.

End-to-end runs use the untrained plumbing registry (--registry): its labels are
meaningless, so these tests check files, geometry, messages and exit codes only.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.cli import main
from KDSegmentationLib.errors import EXIT_CANCELLED, EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE

ORGANS = {"aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach"}


def _run(capsys, registry, *args):
    code = main(["--registry", str(registry), *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _same_geometry(a, b):
    return (a.GetSize(), a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == \
        (b.GetSize(), b.GetSpacing(), b.GetOrigin(), b.GetDirection())


def test_sample_segmentation_writes_label_map_volumes_and_timings(capsys, plumbing_registry, tmp_path, example_ct):
    out, vol = tmp_path / "seg.nii.gz", tmp_path / "volumes.json"
    code, stdout, stderr = _run(capsys, plumbing_registry, "segment", "--sample", "-o", out, "--volumes-json", vol)
    assert code == 0, stderr
    seg = sitk.ReadImage(str(out))
    assert _same_geometry(seg, example_ct) and seg.GetPixelID() == sitk.sitkUInt8
    data = json.loads(vol.read_text(encoding="utf-8"))
    assert set(data["volumes_ml"]) == ORGANS and data["model"] == "plumbing" and data["device"] == "cpu"
    assert list(data["timings_s"]) == ["read", "load", "preprocess", "infer", "postprocess", "write"]
    labels = sitk.GetArrayFromImage(seg)
    voxel_ml = np.prod(seg.GetSpacing()) / 1000
    assert data["volumes_ml"]["liver"] == pytest.approx((labels == 5).sum() * voxel_ml)
    assert "Timing (s): read" in stdout and "infer" in stdout and "write" in stdout and "total" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "seg.nii.gz", "volumes.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not a private temp file


def test_real_dicom_folder_and_structure_subset(capsys, plumbing_registry, tmp_path, shared_data):
    out = tmp_path / "seg.nrrd"
    folder = shared_data / "ct" / "totalsegmentator_dicom" / "example_ct_dicom"
    code, stdout, stderr = _run(capsys, plumbing_registry, "segment", folder, "-o", out,
                                "--structures", "liver,Spleen", "--no-postprocess", "--batch-size", "4",
                                "--threads", "1", "--device", "cpu")
    assert code == 0, stderr
    seg = sitk.ReadImage(str(out))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    series = reader.Execute()
    assert seg.GetSize() == series.GetSize() and seg.GetDirection() == series.GetDirection()
    np.testing.assert_allclose(seg.GetOrigin(), series.GetOrigin(), atol=1e-4)  # NRRD stores text decimals
    np.testing.assert_allclose(seg.GetSpacing(), series.GetSpacing(), atol=1e-6)
    labels = sitk.GetArrayFromImage(seg)
    assert labels.shape == (20, 512, 512)
    assert set(np.unique(labels)) <= {0, 5, 7}
    assert "liver" in stdout and "spleen" in stdout and "stomach" not in stdout


def test_verbose_logs_geometry_and_device(capsys, plumbing_registry, tmp_path, shared_data):
    folder = shared_data / "ct" / "dcmqi_3slice" / "ct-3slice"
    code, _, stderr = _run(capsys, plumbing_registry, "-v", "segment", folder, "-o", tmp_path / "s.nii.gz")
    assert code == 0, stderr
    assert "info: Read" in stderr and "(512, 512, 3)" in stderr and "on cpu" in stderr


def _write(image, path):
    sitk.WriteImage(image, str(path))
    return path


def _bad_inputs(tmp_path, shared_data):
    example = shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    ct = sitk.ReadImage(str(example))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(example.read_bytes()[:5000])
    empty = tmp_path / "empty_dicom"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here", encoding="utf-8")
    several = tmp_path / "two_series"
    shutil.copytree(shared_data / "ct" / "dcmqi_3slice" / "ct-3slice", several)
    for f in sorted((shared_data / "ct" / "totalsegmentator_dicom" / "example_ct_dicom").iterdir())[:3]:
        shutil.copy(f, several / f.name)
    arr = sitk.GetArrayFromImage(ct).astype(np.float32)
    nan = arr.copy()
    nan[3, 10, 10] = np.nan
    nan_image = sitk.GetImageFromArray(nan)
    rgb = sitk.Compose([ct[:, :, 5]] * 3)
    four_d = sitk.JoinSeries([ct, ct])
    return {
        "missing": (tmp_path / "nope.nii.gz", "does not exist"),
        "corrupt": (corrupt, "truncated or corrupt"),
        "2D": (_write(ct[:, :, 5], tmp_path / "slice.nii.gz"), "2D image"),
        "4D": (_write(four_d, tmp_path / "four.nii.gz"), "4D image"),
        "RGB": (_write(sitk.Cast(rgb, sitk.sitkVectorUInt8), tmp_path / "rgb.nrrd"), "components per voxel"),
        "vector 3D": (_write(sitk.Compose([ct, ct]), tmp_path / "vector.mha"), "2 components per voxel"),
        "single DICOM file": (shared_data / "ct" / "dcmqi_3slice" / "ct-3slice" / "01.dcm", "whole DICOM series"),
        "empty DICOM folder": (empty, "No DICOM series"),
        "several series": (several, "--series UID"),
        "constant": (_write(sitk.Image(64, 64, 20, sitk.sitkInt16) - 1000, tmp_path / "const.nii.gz"), "constant"),
        "NaN": (_write(nan_image, tmp_path / "nan.mha"), "NaN"),
    }


BAD_CASES = ["missing", "corrupt", "2D", "4D", "RGB", "vector 3D", "single DICOM file", "empty DICOM folder",
             "several series", "constant", "NaN"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_with_one_clear_message_and_no_output(case, capsys, plumbing_registry, tmp_path, shared_data):
    path, expected = _bad_inputs(tmp_path, shared_data)[case]
    out = tmp_path / "out" / "seg.nii.gz"
    out.parent.mkdir()
    code, stdout, stderr = _run(capsys, plumbing_registry, "segment", path, "-o", out, "--volumes-json",
                                out.parent / "v.json")
    assert code == EXIT_INPUT
    assert expected in stderr and stderr.startswith("error: ")
    assert len(stderr.strip().splitlines()) == 1
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exit_code_of_the_real_command(case, plumbing_registry, tmp_path, shared_data):
    """The same inputs through a separate `python -m KDSegmentationLib.cli` process."""
    path, expected = _bad_inputs(tmp_path, shared_data)[case]
    out = tmp_path / "out" / "seg.nii.gz"
    out.parent.mkdir()
    run = subprocess.run([sys.executable, "-m", "KDSegmentationLib.cli", "--registry", str(plumbing_registry),
                          "segment", str(path), "-o", str(out)],
                         capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert run.returncode == EXIT_INPUT, run.stderr
    assert run.stderr.startswith("error: ") and expected in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert list(out.parent.iterdir()) == []


def test_several_series_lists_uids_and_series_option_selects_one(capsys, plumbing_registry, tmp_path, shared_data):
    path, _ = _bad_inputs(tmp_path, shared_data)["several series"]
    code, _, stderr = _run(capsys, plumbing_registry, "segment", path, "-o", tmp_path / "x.nii.gz")
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    assert code == EXIT_INPUT and len(uids) == 2
    assert all(uid in stderr for uid in uids) and "3 files" in stderr
    dcmqi_uid = [u for u in uids if len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), u)) == 3][0]
    code, _, stderr = _run(capsys, plumbing_registry, "segment", path, "--series", dcmqi_uid, "-o", tmp_path / "x.nii.gz")
    assert code == 0, stderr
    assert sitk.ReadImage(str(tmp_path / "x.nii.gz")).GetSize() == (512, 512, 3)
    code, _, stderr = _run(capsys, plumbing_registry, "segment", path, "--series", "1.2.3", "-o", tmp_path / "y.nii.gz")
    assert code == EXIT_INPUT and "1.2.3 is not in" in stderr and dcmqi_uid in stderr
    assert not (tmp_path / "y.nii.gz").exists()


@pytest.mark.parametrize("kind, expected", [("normalised", "looks normalised"), ("uint8", "8-bit export"),
                                            ("no rescale intercept", "no air")])
def test_non_ct_intensities_warn_once(kind, expected, capsys, plumbing_registry, tmp_path, shared_data):
    ct = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"))
    if kind == "normalised":
        image = sitk.RescaleIntensity(sitk.Cast(ct, sitk.sitkFloat32), 0.0, 1.0)
    elif kind == "uint8":
        image = sitk.Cast(sitk.RescaleIntensity(ct, 0, 255), sitk.sitkUInt8)
    else:  # raw stored values, as when a DICOM's RescaleIntercept of -1024 was dropped
        image = sitk.Cast(ct, sitk.sitkInt32) + 1024
    path = _write(image, tmp_path / "odd.nii.gz")
    code, _, stderr = _run(capsys, plumbing_registry, "segment", path, "-o", tmp_path / "seg.nii.gz")
    assert code == 0
    assert stderr.count("warning: ") == 1 and expected in stderr and "Hounsfield" in stderr
    assert (tmp_path / "seg.nii.gz").is_file()


def test_real_ct_gives_no_warning(capsys, plumbing_registry, tmp_path, shared_data):
    code, _, stderr = _run(capsys, plumbing_registry, "segment", shared_data / "ct" / "dcmqi_3slice" / "ct-3slice",
                           "-o", tmp_path / "seg.nii.gz")
    assert code == 0 and stderr == ""


@pytest.mark.parametrize("args, code, expected", [
    (["--model", "nope"], EXIT_MODEL, "Unknown model id 'nope'"),
    (["--structures", "liver,heart"], EXIT_MODEL, "Unknown structure 'heart'"),
])
def test_unknown_model_or_structure(capsys, plumbing_registry, tmp_path, args, code, expected):
    out = tmp_path / "seg.nii.gz"
    result, _, stderr = _run(capsys, plumbing_registry, "segment", "--sample", "-o", out, *args)
    assert result == code and expected in stderr and stderr.startswith("error: ")
    assert "plumbing" in stderr or "Valid structures: aorta" in stderr  # the fix names valid choices
    assert not out.exists()


@pytest.mark.parametrize("make_path, expected", [
    (lambda tmp: tmp / "missing_dir" / "seg.nii.gz", "does not exist"),
    (lambda tmp: tmp / "seg.png", "unsupported extension"),
    (lambda tmp: tmp / "a_folder.nii.gz", "is a folder"),
    (lambda tmp: tmp / "file.txt" / "seg.nii.gz", "is a file, not a folder"),
    (lambda tmp: "/proc/kdseg_test_seg.nii.gz", "not writable"),
])
def test_unwritable_output(capsys, plumbing_registry, tmp_path, make_path, expected):
    (tmp_path / "a_folder.nii.gz").mkdir()
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, stderr = _run(capsys, plumbing_registry, "segment", "--sample", "-o", make_path(tmp_path))
    assert code == EXIT_OUTPUT and expected in stderr and len(stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_output_that_is_the_input_is_refused(capsys, plumbing_registry, tmp_path, shared_data):
    ct = tmp_path / "ct.nii.gz"
    shutil.copy(shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz", ct)
    before = ct.read_bytes()
    code, _, stderr = _run(capsys, plumbing_registry, "segment", ct, "-o", tmp_path / "." / "ct.nii.gz")
    assert code == EXIT_OUTPUT and "is the input file" in stderr
    assert ct.read_bytes() == before


def test_ctrl_c_during_inference_leaves_no_file_and_keeps_an_existing_one(capsys, plumbing_registry, tmp_path,
                                                                          monkeypatch):
    import itertools

    from KDSegmentationLib.inference.onnx_engine import InferenceEngine
    from KDSegmentationLib.inference.run_layout import run_layout

    calls = []
    numbers = itertools.count(1)  # the calls come from the pipeline's worker threads, possibly two at once
    real_run = InferenceEngine.run

    def interrupted(self, batch):
        number = next(numbers)
        calls.append(number)
        if number == 3:
            raise KeyboardInterrupt
        return real_run(self, batch)

    monkeypatch.setattr(InferenceEngine, "run", interrupted)
    out = tmp_path / "seg.nii.gz"
    code, _, stderr = _run(capsys, plumbing_registry, "segment", "--sample", "-o", out)
    # Calls already started on the other worker(s) finish; no new one starts after the interrupt is seen.
    assert code == EXIT_CANCELLED and 3 <= len(calls) <= 3 + run_layout().concurrent_runs
    assert stderr.startswith("error: interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    out.write_bytes(b"previous result")
    calls.clear()
    numbers = itertools.count(1)
    code, _, _ = _run(capsys, plumbing_registry, "segment", "--sample", "-o", out)
    assert code == EXIT_CANCELLED and out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "seg.nii.gz"]


def test_ctrl_c_while_writing_leaves_no_partial_file(capsys, plumbing_registry, tmp_path, monkeypatch):
    import KDSegmentationLib.imaging.image_files as image_io

    def half_written(image, path, useCompression=True):
        with open(path, "wb") as handle:
            handle.write(b"\x1f\x8b partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(image_io.sitk, "WriteImage", half_written)
    code, _, _ = _run(capsys, plumbing_registry, "segment", "--sample", "-o", tmp_path / "seg.nii.gz")
    assert code == EXIT_CANCELLED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


@pytest.mark.parametrize("args", [
    ["segment", "--sample"],                                  # no -o
    ["segment", "x.nii.gz", "--sample", "-o", "y.nii.gz"],    # input and --sample
    ["segment", "--sample", "-o", "y.nii.gz", "--batch-size", "0"],
    ["segment", "--sample", "-o", "y.nii.gz", "--threads", "two"],
    ["segment", "--sample", "-o", "y.nii.gz", "--device", "tpu"],
    ["segment", "--sample", "-o", "y.nii.gz", "--structures", ","],
    [],
])
def test_usage_errors_exit_2(capsys, args):
    assert main(args) == EXIT_USAGE
    assert "usage: kdseg" in capsys.readouterr().err


def test_models_download_and_exit_codes_of_the_installed_command(plumbing_registry, tmp_path):
    cli = [sys.executable, "-m", "KDSegmentationLib.cli", "--registry", str(plumbing_registry)]
    text = {"capture_output": True, "encoding": "utf-8", "errors": "replace", "timeout": 120}
    listing = subprocess.run(cli + ["models"], **text)
    assert listing.returncode == 0 and "plumbing (default)" in listing.stdout
    assert "available offline" in listing.stdout and "liver" in listing.stdout
    download = subprocess.run(cli + ["download", "plumbing"], **text)
    assert download.returncode == 0 and "verified weights at" in download.stdout
    unknown = subprocess.run(cli + ["download", "nope"], **text)
    assert unknown.returncode == EXIT_MODEL and unknown.stderr.startswith("error: Unknown model id 'nope'")
    usage = subprocess.run([sys.executable, "-m", "KDSegmentationLib.cli", "segment"], capture_output=True,
                           encoding="utf-8", errors="replace", timeout=120)
    assert usage.returncode == EXIT_USAGE


def test_empty_registry_says_how_to_get_a_model(capsys, tmp_path):
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"schema_version": 1, "default_model_id": None, "models": []}), encoding="utf-8")
    assert main(["--registry", str(registry), "models"]) == 0
    assert "No models" in capsys.readouterr().out
    code = main(["--registry", str(registry), "segment", "--sample", "-o", str(tmp_path / "s.nii.gz")])
    err = capsys.readouterr().err
    assert code == EXIT_MODEL and "No trained model is installed" in err and "kdseg-train" in err
    assert not (tmp_path / "s.nii.gz").exists()
