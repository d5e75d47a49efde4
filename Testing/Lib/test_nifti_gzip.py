""".nii.gz read with one verified decompression streamed into the image: ITK's result to the bit, corrupt streams refused."""

import gzip
import importlib.metadata
import importlib.util
import struct
import sys
import zlib

import numpy as np
import pytest
import SimpleITK as sitk
from packaging.requirements import Requirement

from KDSegmentationLib.errors import InputImageError
from KDSegmentationLib.imaging.image_files import read_image
from KDSegmentationLib.imaging import nifti_gzip
from KDSegmentationLib.imaging.nifti_gzip import read_nifti_gz


def assert_same_image(got, expected, what):
    assert got.GetPixelID() == expected.GetPixelID(), what
    assert (got.GetSize(), got.GetOrigin(), got.GetSpacing(), got.GetDirection()) == \
        (expected.GetSize(), expected.GetOrigin(), expected.GetSpacing(), expected.GetDirection()), what
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(expected),
                                  err_msg=what)


@pytest.fixture(scope="module")
def real_niftis(shared_data):
    return sorted(shared_data.rglob("*.nii.gz"))


def isal_is_a_dependency_here() -> bool:
    """Whether pip installs isal with kdsegmentation here (pyproject.toml's environment marker, evaluated as pip does)."""
    for text in importlib.metadata.requires("kdsegmentation") or []:
        requirement = Requirement(text)
        if requirement.name == "isal":
            return requirement.marker is None or requirement.marker.evaluate({"extra": ""})
    return False


@pytest.fixture(params=["isal", "standard library"])
def inflate(request, monkeypatch):
    """Each inflate the reader can run on: ISA-L (a dependency) and zlib (Slicer's Python may lack isal)."""
    if request.param == "isal":
        if importlib.util.find_spec("isal") is None:
            if isal_is_a_dependency_here():
                pytest.fail("isal is a dependency of kdsegmentation on this platform but is not installed: "
                            "pip install -e . (CI must test the ISA-L path it ships)")
            pytest.skip("pyproject.toml does not install isal on this platform (no wheel)")
        from isal import isal_zlib
        assert nifti_gzip._inflate_module() is isal_zlib
    else:
        monkeypatch.setitem(sys.modules, "isal", None)  # `import isal` now raises ImportError, as inside Slicer
        assert nifti_gzip._inflate_module() is zlib
    return request.param


def test_every_real_nifti_reads_as_itk_reads_it(real_niftis, inflate):
    assert len(real_niftis) >= 4
    for path in real_niftis:
        image = read_nifti_gz(path)
        assert image is not None, f"{path.name} is a plain NIfTI-1 and should take the single-decode path"
        assert_same_image(image, sitk.ReadImage(str(path)), path.name)
        assert_same_image(read_image(path), sitk.ReadImage(str(path)), path.name)


@pytest.mark.parametrize("pixel_type", [sitk.sitkInt16, sitk.sitkFloat32, sitk.sitkUInt8, sitk.sitkInt32])
@pytest.mark.parametrize("orientation", ["LPS", "RAS", "PIR"])
def test_real_ct_rewritten_in_other_types_and_orientations(shared_data, tmp_path, pixel_type, orientation):
    ct = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"))
    image = sitk.DICOMOrient(sitk.Cast(sitk.Clamp(ct, lowerBound=0, upperBound=255) if pixel_type == sitk.sitkUInt8
                                       else ct, pixel_type), orientation)
    image.SetOrigin((12.5, -40.25, 7.0))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path), useCompression=True)
    got = read_nifti_gz(path)
    assert got is not None
    assert_same_image(got, sitk.ReadImage(str(path)), f"{pixel_type} {orientation}")


def _rewrite_header(source, target, **floats_at):
    stream = bytearray(gzip.decompress(source.read_bytes()))
    for offset, value in floats_at.values():
        struct.pack_into("<f", stream, offset, value)
    target.write_bytes(gzip.compress(bytes(stream), compresslevel=1))


@pytest.mark.parametrize("slope, intercept", [(1.0, -1024.0), (-3.0, 7.0)])
def test_integer_voxels_scaled_by_whole_numbers_read_as_itk_reads_them(shared_data, tmp_path, monkeypatch, inflate,
                                                                       slope, intercept):
    """dcm2niix's CT (int16, slope 1, intercept -1024): float32 values computed while decompressing, ITK's to the bit."""
    source = shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    scaled = tmp_path / "scaled.nii.gz"
    _rewrite_header(source, scaled, slope=(112, slope), intercept=(116, intercept))
    expected = sitk.ReadImage(str(scaled))
    assert expected.GetPixelID() == sitk.sitkFloat32
    assert_same_image(read_nifti_gz(scaled), expected, f"slope {slope} intercept {intercept}")
    assert_same_image(read_image(scaled), expected, f"slope {slope} intercept {intercept}")
    monkeypatch.setattr(nifti_gzip, "_OUTPUT_PIECE_BYTES", 1231)  # odd pieces: voxels cut between pieces
    assert_same_image(read_nifti_gz(scaled), expected, "small pieces")


@pytest.mark.parametrize("name, slope, intercept", [("example_ct_sm.nii.gz", 0.1, 3.3),  # ITK rounds double math
                                                    ("example_ct.nii.gz", 1.0, -1024.0)])  # int32: 2**24 exceeded
def test_other_scalings_are_left_to_itk(shared_data, tmp_path, name, slope, intercept):
    source = shared_data / "ct" / "totalsegmentator_example" / name
    scaled = tmp_path / "scaled.nii.gz"
    _rewrite_header(source, scaled, slope=(112, slope), intercept=(116, intercept))
    assert read_nifti_gz(scaled) is None
    expected = sitk.ReadImage(str(scaled))
    assert_same_image(read_image(scaled), expected, "scaled")
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(source))).astype(np.float64)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(expected), raw * slope + intercept, rtol=1e-6, atol=1e-5)


def test_volume_stored_as_4d_with_one_time_point_reads_as_itk_reads_it(shared_data, tmp_path):
    """dim[0] = 4 with dim[4] = 1 is a 3D volume to ITK: the single decode takes it; two time points do not."""
    source = shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    stream = bytearray(gzip.decompress(source.read_bytes()))
    struct.pack_into("<2h", stream, 40, 4, 122)  # dim[0], dim[1] (unchanged)
    struct.pack_into("<h", stream, 48, 1)  # dim[4]
    one = tmp_path / "one_time_point.nii.gz"
    one.write_bytes(gzip.compress(bytes(stream), compresslevel=1))
    expected = sitk.ReadImage(str(one))
    assert expected.GetDimension() == 3
    assert_same_image(read_nifti_gz(one), expected, "dim[0] = 4, dim[4] = 1")
    struct.pack_into("<3h", stream, 44, 101, 15, 2)  # dim[2], dim[3] = 15 slices, dim[4] = 2 time points
    two = tmp_path / "two_time_points.nii.gz"
    two.write_bytes(gzip.compress(bytes(stream), compresslevel=1))
    assert read_nifti_gz(two) is None


@pytest.mark.parametrize("vox_offset", [float("nan"), float("inf"), -4.0])
def test_damaged_vox_offset_is_refused_in_one_sentence(shared_data, tmp_path, vox_offset):
    """No byte offset (NaN, infinite, negative): the fast path steps aside, the reader names the field."""
    source = shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    odd = tmp_path / "odd_offset.nii.gz"
    _rewrite_header(source, odd, vox_offset=(108, vox_offset))
    assert read_nifti_gz(odd) is None
    with pytest.raises(InputImageError, match="vox_offset"):
        read_image(odd)


def test_fractional_vox_offset_is_left_to_itk(shared_data, tmp_path):
    source = shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    odd = tmp_path / "odd_offset.nii.gz"
    _rewrite_header(source, odd, vox_offset=(108, 352.5))
    assert read_nifti_gz(odd) is None
    assert_same_image(read_image(odd), sitk.ReadImage(str(odd)), "vox_offset 352.5")


def test_corrupt_or_truncated_stream_is_refused_although_itk_would_read_it(shared_data, tmp_path, inflate):
    data = (shared_data / "ct" / "totalsegmentator_example" / "example_ct.nii.gz").read_bytes()
    corrupt = bytearray(data)
    corrupt[len(data) // 3] ^= 0x01
    wrong_crc = bytearray(data)
    wrong_crc[-8] ^= 0x01  # the deflate data is intact: only the CRC-32 in the trailer tells
    cases = {"corrupt.nii.gz": bytes(corrupt), "truncated.nii.gz": data[: len(data) * 2 // 3],
             "wrong_crc.nii.gz": bytes(wrong_crc), "no_trailer.nii.gz": data[:-8],
             "garbage_after.nii.gz": data + b"not gzip"}
    scaled = tmp_path / "scaled.nii.gz"  # not the plain case: ITK reads it after the stream is checked
    _rewrite_header(shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz", scaled,
                    slope=(112, 0.1), intercept=(116, 3.3))
    cases["truncated_scaled.nii.gz"] = scaled.read_bytes()[:-1000]
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputImageError, match="truncated or corrupt") as error:
            read_image(path)
        assert name in str(error.value)
    for name in ("corrupt.nii.gz", "wrong_crc.nii.gz"):
        sitk.ReadImage(str(tmp_path / name))  # ITK alone reads these without a word


def test_members_padding_and_every_piece_boundary_decode_as_itk_reads_the_file(shared_data, tmp_path, monkeypatch,
                                                                              inflate):
    """gzip allows several members and zero padding; tiny pieces put piece ends everywhere, also inside voxels."""
    source = shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    stream = gzip.decompress(source.read_bytes())
    split = 352 + 12345  # inside the voxels, at an odd byte
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(stream[:split]) + b"\0" * 100 + gzip.compress(stream[split:]) + b"\0" * 7)
    expected = sitk.ReadImage(str(source))
    assert_same_image(read_nifti_gz(path), expected, "two members with zero padding")
    monkeypatch.setattr(nifti_gzip, "_INPUT_PIECE_BYTES", 997)
    monkeypatch.setattr(nifti_gzip, "_OUTPUT_PIECE_BYTES", 1231)
    assert_same_image(read_nifti_gz(path), expected, "small pieces, two members")
    assert_same_image(read_nifti_gz(source), expected, "small pieces")


def test_header_longer_than_the_stream_is_refused(shared_data, tmp_path):
    source = shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(gzip.decompress(source.read_bytes())[:-2]))  # a valid stream, 1 voxel short
    with pytest.raises(InputImageError, match="header describes"):
        read_nifti_gz(short)
