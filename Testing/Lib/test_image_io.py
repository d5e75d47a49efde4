"""Reading real CT (NIfTI, DICOM JPEG 2000, DICOM uncompressed), validation errors, atomic writing."""

import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.errors import InputImageError, OutputError
from KDSegmentationLib.imaging.image_files import check_output_path, list_dicom_series, read_image, write_image_atomic
from KDSegmentationLib.imaging.intensity_checks import check_ct_intensities, intensity_warnings, reject_unusable_values


@pytest.fixture(scope="module")
def ct_dir(shared_data):
    return shared_data / "ct"


def test_reads_real_nifti_with_its_header(ct_dir):
    image = read_image(ct_dir / "totalsegmentator_example" / "example_ct.nii.gz")
    assert image.GetSize() == (122, 101, 112)
    assert image.GetSpacing() == (3.0, 3.0, 3.0)
    assert image.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert check_ct_intensities(sitk.GetArrayViewFromImage(image)) == []


def itk_series_read(folder):
    """A DICOM folder read by ITK alone (files in GDCM's order), as kdseg read it before its one-pass read."""
    reader = sitk.ImageSeriesReader()
    (uid,) = reader.GetGDCMSeriesIDs(str(folder))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def assert_same_as_itk_series_read(image, folder):
    expected = itk_series_read(folder)
    assert image.GetPixelID() == expected.GetPixelID()
    assert (image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection()) == \
        (expected.GetSize(), expected.GetOrigin(), expected.GetSpacing(), expected.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(expected))


def test_reads_real_jpeg2000_dicom_series_in_hounsfield_units(ct_dir):
    folder = ct_dir / "totalsegmentator_dicom" / "example_ct_dicom"
    (uid, count, _description), = list_dicom_series(folder)
    assert count == 20
    image = read_image(folder)
    assert_same_as_itk_series_read(image, folder)  # geometry to the bit, every voxel
    assert image.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(image.GetSpacing(), (0.977, 0.977, 2.0), atol=1e-3)
    values = sitk.GetArrayViewFromImage(image)
    assert values.min() <= -1000 and 500 < values.max() < 4000  # air to bone: rescaled to HU
    assert check_ct_intensities(values) == []
    assert read_image(folder, series_uid=uid).GetSize() == image.GetSize()


def test_reads_real_3_slice_dicom_and_its_manual_liver_overlays_liver_hu(ct_dir):
    folder = ct_dir / "dcmqi_3slice"
    image = read_image(folder / "ct-3slice")
    assert_same_as_itk_series_read(image, folder / "ct-3slice")
    assert image.GetSize() == (512, 512, 3)
    np.testing.assert_allclose(image.GetSpacing(), (0.811, 0.811, 1.0), atol=1e-3)
    values = sitk.GetArrayFromImage(image)
    assert values.min() == -3024  # padding outside the scanned field
    assert intensity_warnings(values) == []
    labels = sitk.Resample(sitk.ReadImage(str(folder / "liver_spine_seg.nrrd")), image, sitk.Transform(),
                           sitk.sitkNearestNeighbor)
    liver = values[sitk.GetArrayFromImage(labels) == 1]
    assert liver.size > 1000 and 20 < np.median(liver) < 150  # liver parenchyma


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_atomic_write_round_trips_real_ct_and_leaves_nothing_else(ct_dir, tmp_path, suffix):
    image = sitk.ReadImage(str(ct_dir / "totalsegmentator_example" / "example_ct_sm.nii.gz"))
    path = write_image_atomic(image, tmp_path / f"copy{suffix}")
    assert [p.name for p in tmp_path.iterdir()] == [f"copy{suffix}"]
    back = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)


def test_failed_or_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import KDSegmentationLib.imaging.image_files as image_io

    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"old result")
    image = sitk.Image(20, 20, 4, sitk.sitkUInt8)

    def fails_half_way(exc):
        def write(image, path, useCompression=True):
            with open(path, "wb") as handle:
                handle.write(b"partial")
            raise exc
        return write

    monkeypatch.setattr(image_io.sitk, "WriteImage", fails_half_way(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_image_atomic(image, out)
    monkeypatch.setattr(image_io.sitk, "WriteImage", fails_half_way(RuntimeError("No space left on device")))
    with pytest.raises(OutputError, match="No space left on device"):
        write_image_atomic(image, out)
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"] and out.read_bytes() == b"old result"


def test_output_path_checks(tmp_path):
    assert check_output_path(tmp_path / "a.nii.gz") == tmp_path / "a.nii.gz"
    assert list(tmp_path.iterdir()) == []  # the writability probe is removed
    with pytest.raises(OutputError, match="unsupported extension") as info:
        check_output_path(tmp_path / "a.png")
    assert ".nii.gz" in info.value.hint
    with pytest.raises(OutputError, match="not writable"):
        check_output_path("/proc/seg.nii.gz")


def _corrupt_files(tmp_path, ct_dir):
    source = (ct_dir / "totalsegmentator_example" / "example_ct_sm.nii.gz").read_bytes()
    files = {
        "truncated.nii.gz": source[: len(source) // 2],
        "not_gzip.nii.gz": b"this is a text file with the wrong name",
        "truncated.nii": sitk.GetArrayFromImage(sitk.ReadImage(str(ct_dir / "totalsegmentator_example" /
                                                                     "example_ct_sm.nii.gz"))).tobytes()[:2000],
        "bad_header.nrrd": b"NRRD0004\ntype: nonsense\ndimension: 3\n\n",
        "garbage.mha": b"\x00\x01\x02",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / name for name in files]


def test_corrupt_files_raise_input_errors_naming_the_file(tmp_path, ct_dir):
    for path in _corrupt_files(tmp_path, ct_dir):
        with pytest.raises(InputImageError) as info:
            read_image(path)
        assert str(path) in info.value.message and info.value.hint
        assert "\n" not in str(info.value) and ".cxx" not in str(info.value)


def test_missing_path_and_dicom_folder_problems(tmp_path, ct_dir):
    with pytest.raises(InputImageError, match="does not exist"):
        read_image(tmp_path / "missing.nii.gz")
    # A typical export: the series sits a few folders down.
    nested = tmp_path / "patient" / "study" / "series"
    shutil.copytree(ct_dir / "dcmqi_3slice" / "ct-3slice", nested)
    with pytest.raises(InputImageError, match="subfolders") as info:
        read_image(tmp_path / "patient")
    assert str(nested) in info.value.message
    assert read_image(nested).GetSize() == (512, 512, 3)
    with pytest.raises(InputImageError, match="whole DICOM series"):
        read_image(nested / "01.dcm")
    with pytest.raises(InputImageError, match="is not in"):
        read_image(nested, series_uid="1.2.3.4")


def test_shape_validation(tmp_path, ct_dir):
    ct = sitk.ReadImage(str(ct_dir / "totalsegmentator_example" / "example_ct_sm.nii.gz"))
    cases = {
        "2d.nii.gz": (ct[:, :, 3], "2D image"),
        "thin.nii.gz": (ct[:, :, 3:4], "single slice"),
        "line.nrrd": (ct[:, 5:6, 3:5], "single slice"),
        "4d.nii.gz": (sitk.JoinSeries([ct, ct]), "4D image"),
        "rgb.nrrd": (sitk.Compose([sitk.Cast(ct, sitk.sitkUInt8)] * 3), "3 components per voxel"),
    }
    for name, (image, expected) in cases.items():
        sitk.WriteImage(image, str(tmp_path / name))
        with pytest.raises(InputImageError, match=expected):
            read_image(tmp_path / name)


def test_intensity_checks_on_real_ct(ct_dir):
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_dir / "totalsegmentator_example" / "example_ct_sm.nii.gz")))
    assert intensity_warnings(hu) == []
    unit = (hu - hu.min()) / float(hu.max() - hu.min())
    assert "normalised" in intensity_warnings(unit)[0]
    assert "8-bit" in intensity_warnings((unit * 255).astype(np.uint8))[0]
    assert "no air" in intensity_warnings(hu.astype(np.int32) + 1024)[0]  # rescale intercept dropped / MR-like
    for bad in (np.nan, np.inf):
        with_nan = hu.astype(np.float32)
        with_nan[2, 3, 4] = bad
        with pytest.raises(InputImageError, match="1 NaN or infinite"):
            reject_unusable_values(with_nan)
    with pytest.raises(InputImageError, match="constant"):
        reject_unusable_values(np.full((4, 20, 20), -1000, np.int16))
    reject_unusable_values(hu)
    almost = np.full((4, 64, 64), -1000, np.int16)  # larger than the sample: one voxel between sampled ones
    almost[0, 0, 1] = 40
    reject_unusable_values(almost)
    with pytest.raises(InputImageError, match="constant"):
        reject_unusable_values(np.full((4, 64, 64), 7, np.uint8))


def test_written_file_has_normal_permissions(tmp_path):
    """The written file has the user's normal permissions, like any other file they create."""
    path = write_image_atomic(sitk.Image(20, 20, 4, sitk.sitkUInt8), tmp_path / "seg.nrrd")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
