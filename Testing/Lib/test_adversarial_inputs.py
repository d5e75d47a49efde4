"""`kdseg segment` against bad and tricky inputs, as a hostile but realistic user would try them.

Every case runs the command in-process (``main(argv)``) with the bundled real model on
small crops of the real CTs in ../shared/data. A refused case must exit with its
documented code, print exactly one ``error:`` line naming the problem, and leave the
output folder exactly as it was (no label map, no JSON, no temporary file). A valid
tricky case must exit 0 and write a label map with exactly the input's geometry.
Disk-full and read-only outputs are in test_written_file_integrity.py.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.cli import main
from KDSegmentationLib.errors import EXIT_CANCELLED, EXIT_INPUT, EXIT_OUTPUT

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # the shared_data fixture checks it
DICOM_DIR = ("ct", "totalsegmentator_dicom", "example_ct_dicom")
# Axial slices 100-107 of the sample CT hold liver and spleen (TotalSegmentator reference).
CROP_SLICES = slice(100, 108)


@pytest.fixture(scope="module")
def ct_crop(shared_data) -> sitk.Image:
    """8 real axial slices (122 x 101 x 8, 3 mm, int32 HU) with liver and spleen."""
    ct = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_ct.nii.gz"))
    return ct[:, :, CROP_SLICES]


@pytest.fixture
def dicom_copy(shared_data, tmp_path) -> Path:
    """A private copy of the real 20-slice DICOM series (positions -804.5 .. -766.5 mm, 2 mm apart)."""
    folder = tmp_path / "dicom"
    shutil.copytree(shared_data.joinpath(*DICOM_DIR), folder)
    return folder


def _run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _listing(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def _assert_refused(code, stderr, expected_code, fragment):
    assert code == expected_code, stderr
    assert stderr.startswith("error: ") and fragment in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr and "WARNING: In" not in stderr and ".cxx" not in stderr


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize(), a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == \
        (b.GetSize(), b.GetSpacing(), b.GetOrigin(), b.GetDirection())


# --- building bad inputs from real files ------------------------------------------------

def _write(image, path: Path, compress=True) -> Path:
    sitk.WriteImage(image, str(path), compress)
    return path


def _patched_nifti(ct, path: Path, pixdim_index: int, value: float) -> Path:
    """``ct`` as an uncompressed NIfTI whose header pixdim[pixdim_index] is ``value``."""
    raw = bytearray(_write(ct, path, compress=False).read_bytes())
    raw[76 + 4 * pixdim_index:80 + 4 * pixdim_index] = struct.pack("<f", value)
    path.write_bytes(bytes(raw))
    return path


def _patched_metaimage(ct, path: Path, field: str, value: str) -> Path:
    text = _write(ct, path, compress=False).read_bytes()
    start = text.index(field.encode() + b" = ")
    end = text.index(b"\n", start)
    path.write_bytes(text[:start] + f"{field} = {value}".encode() + text[end:])
    return path


def _dicom_files(folder: Path):
    return sorted(folder.iterdir())


def _dicom_tag(path: Path, tag: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData(tag).strip()


def _patch_dicom_text(path: Path, old: str, new: str) -> None:
    """Replace a header value in place (same length, so the DICOM element stays valid)."""
    assert len(old) == len(new), (old, new)
    data = path.read_bytes()
    assert data.count(old.encode()) == 1, old
    path.write_bytes(data.replace(old.encode(), new.encode()))


def _shift_dicom_position(path: Path, axis: int, shift: float) -> None:
    position = _dicom_tag(path, "0020|0032")
    values = position.split("\\")
    width = len(values[axis])
    decimals = len(values[axis].split(".")[1]) if "." in values[axis] else 0
    values[axis] = f"{float(values[axis]) + shift:.{decimals}f}".rjust(width)
    _patch_dicom_text(path, position, "\\".join(values))


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# --- refused inputs (exit 3) ------------------------------------------------------------

def _input_cases():
    """name -> builder(tmp, ct, dicom) returning (input path, fragment of the one error line)."""

    def truncated_gz(tmp, ct, dicom):
        full = _write(ct, tmp / "full.nii.gz").read_bytes()
        (tmp / "cut.nii.gz").write_bytes(full[:len(full) // 2])
        return tmp / "cut.nii.gz", "truncated or corrupt"

    def truncated_nii(tmp, ct, dicom):
        data = _write(ct, tmp / "full.nii", compress=False).read_bytes()
        (tmp / "cut.nii").write_bytes(data[:len(data) // 2])
        return tmp / "cut.nii", "is truncated"

    def truncated_mha(tmp, ct, dicom):
        data = _write(ct, tmp / "full.mha", compress=False).read_bytes()
        (tmp / "cut.mha").write_bytes(data[:len(data) // 2])
        return tmp / "cut.mha", "Cannot read"

    def empty_file(tmp, ct, dicom):
        (tmp / "empty.nii.gz").write_bytes(b"")
        return tmp / "empty.nii.gz", "Cannot read"

    def text_as_nrrd(tmp, ct, dicom):
        (tmp / "notes.nrrd").write_text("NRRD0004\nthis is not an image\n", encoding="utf-8")
        return tmp / "notes.nrrd", "Cannot read"

    def symlink_loop(tmp, ct, dicom):
        os.symlink("loop.nii.gz", tmp / "loop.nii.gz")
        return tmp / "loop.nii.gz", "symbolic link loop"

    def dangling_symlink(tmp, ct, dicom):
        os.symlink(tmp / "gone.nii.gz", tmp / "ct.nii.gz")
        return tmp / "ct.nii.gz", "does not exist"

    def named_pipe(tmp, ct, dicom):
        return _fifo(tmp / "ct.nii.gz"), "named pipe"

    def device(tmp, ct, dicom):
        return Path(os.devnull), "is a device"

    def nifti_zero_slice_spacing(tmp, ct, dicom):
        return _patched_nifti(ct, tmp / "z0.nii", 3, 0.0), "pixdim[3] = 0"

    def nifti_nan_slice_spacing(tmp, ct, dicom):
        return _patched_nifti(ct, tmp / "znan.nii", 3, float("nan")), "pixdim[3] = nan"

    def nifti_negative_slice_spacing(tmp, ct, dicom):
        return _patched_nifti(ct, tmp / "zneg.nii", 3, -3.0), "pixdim[3] = -3"

    def nifti_zero_pixel_spacing(tmp, ct, dicom):
        return _patched_nifti(ct, tmp / "x0.nii", 1, 0.0), "pixdim[1] = 0"

    def nifti_infinite_spacing_gz(tmp, ct, dicom):
        plain = _patched_nifti(ct, tmp / "inf.nii", 2, float("inf"))
        (tmp / "inf.nii.gz").write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
        return tmp / "inf.nii.gz", "pixdim[2] = inf"

    def metaimage_zero_spacing(tmp, ct, dicom):
        return _patched_metaimage(ct, tmp / "z0.mha", "ElementSpacing", "3 3 0"), "voxel spacing is zero"

    def metaimage_singular_direction(tmp, ct, dicom):
        return _patched_metaimage(ct, tmp / "sing.mha", "TransformMatrix", "1 0 0 0 1 0 0 1 0"), "singular"

    def metaimage_non_unit_direction(tmp, ct, dicom):
        return (_patched_metaimage(ct, tmp / "scaled.mha", "TransformMatrix", "-2 0 0 0 -1 0 0 0 1"),
                "direction columns of length (2, 1, 1)")

    def nrrd_zero_direction_vector(tmp, ct, dicom):
        text = _write(ct, tmp / "ok.nrrd", compress=False).read_bytes()
        start = text.index(b"space directions: ")
        end = text.index(b"\n", start)
        (tmp / "zdir.nrrd").write_bytes(text[:start] + b"space directions: (-3,0,0) (0,-3,0) (0,0,0)" + text[end:])
        return tmp / "zdir.nrrd", "voxel spacing is zero"

    def single_slice_volume(tmp, ct, dicom):
        return _write(ct[:, :, 3:4], tmp / "one.nrrd"), "a single slice or a line"

    def nan_voxel_float(tmp, ct, dicom):
        array = sitk.GetArrayFromImage(ct).astype(np.float32)
        array[2, 50, 60] = np.nan
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(ct)
        return _write(image, tmp / "nan.nrrd"), "NaN or infinite"

    def vector_image(tmp, ct, dicom):
        return _write(sitk.Compose([ct, ct]), tmp / "two.nii.gz"), "2 components per voxel"

    def dicom_missing_slice(tmp, ct, dicom):
        _dicom_files(dicom)[7].unlink()
        return dicom, "missing 1 slice(s) at -780.50 mm"

    def dicom_three_missing_slices(tmp, ct, dicom):
        files = _dicom_files(dicom)
        for index in (3, 4, 12):
            files[index].unlink()
        return dicom, "missing 3 slice(s) at -790.50, -774.50, -772.50 mm"

    def dicom_corrupt_slice(tmp, ct, dicom):
        victim = _dicom_files(dicom)[7]
        victim.write_bytes(victim.read_bytes()[:3000])
        return dicom, f"cannot be read ({victim.name}); DICOM series in {dicom} is missing 1 slice(s) at -780.50 mm"

    def dicom_duplicated_slice(tmp, ct, dicom):
        shutil.copy(_dicom_files(dicom)[5], dicom / "copy_of_slice_5")
        return dicom, "1 duplicated slice position(s) at -776.50 mm"

    def dicom_uneven_spacing(tmp, ct, dicom):
        _shift_dicom_position(_dicom_files(dicom)[10], 2, 0.8)
        return dicom, "not evenly spaced"

    def dicom_mixed_orientation(tmp, ct, dicom):
        victim = _dicom_files(dicom)[4]
        orientation = _dicom_tag(victim, "0020|0037")
        assert orientation == "1\\0\\0\\0\\1\\0"
        _patch_dicom_text(victim, "1\\0\\0\\0\\1\\0", "0\\1\\0\\1\\0\\0")
        return dicom, f"mixes slice orientations (1 of 20 slices differ from the first, e.g. {victim.name})"

    def dicom_slice_off_the_line(tmp, ct, dicom):
        _shift_dicom_position(_dicom_files(dicom)[9], 0, 5.0)
        return dicom, "do not lie on one line"

    def dicom_folder_with_fifo(tmp, ct, dicom):
        _fifo(dicom / "pipe.dcm")
        return dicom, "entries that are not regular files or folders (named pipes, devices, sockets or " \
                      "broken/looping links): pipe.dcm;"

    def dicom_folder_with_symlink_loop(tmp, ct, dicom):
        os.symlink("b", dicom / "a")
        os.symlink("a", dicom / "b")
        return dicom, "a, b; a DICOM scan would hang or fail"

    def dicom_single_file(tmp, ct, dicom):
        return _dicom_files(dicom)[0], "whole DICOM series"

    def dicom_nested_one_level(tmp, ct, dicom):
        outer = tmp / "patient"
        outer.mkdir()
        shutil.move(str(dicom), str(outer / "series1"))
        return outer, "subfolders"

    def folder_without_dicom(tmp, ct, dicom):
        folder = tmp / "photos"
        folder.mkdir()
        (folder / "readme.txt").write_text("not a CT", encoding="utf-8")
        return folder, "No DICOM series"

    def dicom_two_series_one_without_uid(tmp, ct, dicom):
        shutil.copytree(SHARED_DATA / "ct" / "dcmqi_3slice" / "ct-3slice", dicom, dirs_exist_ok=True)
        return dicom, 'Choose one with --series UID (--series "" selects the series whose UID is empty)'

    return {name: builder for name, builder in locals().items() if not name.startswith("_")}


INPUT_CASES = _input_cases()


@pytest.mark.parametrize("case", sorted(INPUT_CASES))
def test_refused_input_one_line_exit_3_and_no_output(case, capsys, tmp_path, ct_crop, dicom_copy, shared_data):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source, fragment = INPUT_CASES[case](inputs, ct_crop, dicom_copy)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, stdout, stderr = _run(capsys, "segment", source, "-o", out_dir / "seg.nii.gz",
                                "--volumes-json", out_dir / "volumes.json", "--no-progress")
    _assert_refused(code, stderr, EXIT_INPUT, fragment)
    assert stdout == ""
    assert _listing(out_dir) == []


def test_empty_series_uid_is_listed_as_quotes_and_selectable(capsys, tmp_path, dicom_copy, shared_data):
    shutil.copytree(shared_data / "ct" / "dcmqi_3slice" / "ct-3slice", dicom_copy, dirs_exist_ok=True)
    code, _, stderr = _run(capsys, "segment", dicom_copy, "-o", tmp_path / "seg.nii.gz")
    _assert_refused(code, stderr, EXIT_INPUT, '2 DICOM series: "" (20 files')
    code, _, stderr = _run(capsys, "segment", dicom_copy, "--series", "", "-o", tmp_path / "seg.nii.gz",
                           "--structures", "liver", "--no-progress")
    assert code == 0, stderr
    assert sitk.ReadImage(str(tmp_path / "seg.nii.gz")).GetSize() == (512, 512, 20)


# --- refused outputs (exit 7) -----------------------------------------------------------

def _output_cases():
    """name -> builder(folder, ct path) returning (extra argv, fragment); ``folder`` holds ct.nii.gz."""

    def volumes_json_is_the_input(folder, ct):
        return ["-o", folder / "seg.nii.gz", "--volumes-json", ct], "--volumes-json"

    def volumes_json_is_the_output(folder, ct):
        return ["-o", folder / "seg.nii.gz", "--volumes-json", folder / "seg.nii.gz"], "are the same file"

    def volumes_json_via_dot_dot(folder, ct):
        (folder / "sub").mkdir()
        return ["-o", folder / "seg.nii.gz", "--volumes-json", folder / "sub" / ".." / "seg.nii.gz"], "same file"

    def output_is_a_symlink_to_the_input(folder, ct):
        os.symlink(ct, folder / "link.nii.gz")
        return ["-o", folder / "link.nii.gz"], "is the input file"

    def output_is_a_hard_link_to_the_input(folder, ct):
        os.link(ct, folder / "hard.nii.gz")
        return ["-o", folder / "hard.nii.gz"], "is the input file"

    def volumes_json_is_a_symlink_to_the_input(folder, ct):
        os.symlink(ct, folder / "v.json")
        return ["-o", folder / "seg.nii.gz", "--volumes-json", folder / "v.json"], "is the input file"

    def volumes_json_hard_link_to_the_output(folder, ct):
        (folder / "seg.nii.gz").write_bytes(b"previous result")
        os.link(folder / "seg.nii.gz", folder / "v.json")
        return ["-o", folder / "seg.nii.gz", "--volumes-json", folder / "v.json"], "are the same file"

    def output_is_a_named_pipe(folder, ct):
        return ["-o", _fifo(folder / "seg.nii.gz")], "named pipe"

    def output_is_a_symlink_to_a_device(folder, ct):
        os.symlink(os.devnull, folder / "seg.nii.gz")
        return ["-o", folder / "seg.nii.gz"], "is a device"

    def volumes_json_is_a_named_pipe(folder, ct):
        return ["-o", folder / "seg.nii.gz", "--volumes-json", _fifo(folder / "v.json")], "named pipe"

    def volumes_json_is_a_folder(folder, ct):
        (folder / "v.json").mkdir()
        return ["-o", folder / "seg.nii.gz", "--volumes-json", folder / "v.json"], "is a folder"

    def output_in_a_missing_folder(folder, ct):
        return ["-o", folder / "nope" / "seg.nii.gz"], "does not exist"

    def output_with_an_image_extension_itk_cannot_store(folder, ct):
        return ["-o", folder / "seg.png"], "unsupported extension"

    return {name: builder for name, builder in locals().items() if not name.startswith("_")}


OUTPUT_CASES = _output_cases()


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_refused_output_one_line_exit_7_input_untouched(case, capsys, tmp_path, ct_crop):
    ct = _write(ct_crop, tmp_path / "ct.nii.gz")
    before = ct.read_bytes()
    argv, fragment = OUTPUT_CASES[case](tmp_path, ct)
    listing = _listing(tmp_path)
    contents = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.is_symlink()
                and not p.is_fifo()}
    code, stdout, stderr = _run(capsys, "segment", ct, *argv, "--no-progress")
    _assert_refused(code, stderr, EXIT_OUTPUT, fragment)
    assert ct.read_bytes() == before and _listing(tmp_path) == listing
    assert {name: (tmp_path / name).read_bytes() for name in contents} == contents


def test_sheared_input_refuses_nifti_output_before_inference(capsys, tmp_path, ct_crop, monkeypatch):
    from KDSegmentationLib.inference import pipeline

    sheared = _sheared(ct_crop)
    source = _write(sheared, tmp_path / "sheared.nrrd")
    monkeypatch.setattr(pipeline, "segment_image", lambda *a, **k: pytest.fail("inference ran"))
    code, _, stderr = _run(capsys, "segment", source, "-o", tmp_path / "seg.nii.gz", "--no-progress")
    _assert_refused(code, stderr, EXIT_OUTPUT, "NIfTI cannot store this input's sheared")
    assert _listing(tmp_path) == ["sheared.nrrd"]


# --- valid tricky inputs: exit 0 and exactly the input's geometry ----------------------------

def _sheared(ct: sitk.Image, tilt=(0.2, 0.0, 1.0)) -> sitk.Image:
    image = sitk.Image(ct)
    direction = np.asarray(ct.GetDirection()).reshape(3, 3)
    column = np.asarray(tilt, dtype=float)
    direction[:, 2] = column / np.linalg.norm(column)
    image.SetDirection(direction.ravel().tolist())
    return image


def _rotated(ct: sitk.Image, degrees: float) -> sitk.Image:
    image = sitk.Image(ct)
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection((rotation @ np.asarray(ct.GetDirection()).reshape(3, 3)).ravel().tolist())
    return image


def _reoriented(code: str):
    """The same voxels on axes permuted/flipped to ITK orientation ``code``."""
    return lambda ct: sitk.DICOMOrient(ct, code)


def _anisotropic(ct: sitk.Image) -> sitk.Image:
    # Unequal spacing on all three axes, close to the true 3 mm in-plane: the bundled model takes slices at a
    # fixed mm per pixel (physical size), so a header that shrank the body to a quarter would hide the liver.
    image = sitk.Image(ct)
    image.SetSpacing((2.9, 3.1, 5.0))
    return image


def _as_int16(ct: sitk.Image) -> sitk.Image:
    return sitk.Cast(ct, sitk.sitkInt16)


def _as_float32(ct: sitk.Image) -> sitk.Image:
    return sitk.Cast(ct, sitk.sitkFloat32)


VALID_CASES = {
    # name: (transform of the crop, input file name, output file name)
    "oblique_rotated_mha": (lambda ct: _rotated(ct, 25.0), "rotated.mha", "seg.mha"),
    "flipped_axes_nifti": (_reoriented("LPS"), "flipped.nii.gz", "seg.nii.gz"),
    "permuted_axes_nrrd": (_reoriented("PIR"), "permuted.nrrd", "seg.nrrd"),
    "anisotropic_nrrd": (_anisotropic, "aniso.nrrd", "seg.nrrd"),
    "int16_uncompressed_nifti": (_as_int16, "ct16.nii", "seg.nii"),
    "float32_mha_to_nrrd": (_as_float32, "ctf.mha", "seg.nrrd"),
    "path_with_spaces_and_unicode": (lambda ct: ct, "mein Bauch – CT ü.nii.gz", "Segmentierung ä ö.nii.gz"),
    "sheared_nrrd": (_sheared, "sheared.nrrd", "seg.nrrd"),
}


@pytest.mark.parametrize("case", sorted(VALID_CASES))
def test_valid_tricky_input_keeps_exact_geometry(case, capsys, tmp_path, ct_crop):
    transform, in_name, out_name = VALID_CASES[case]
    image = transform(ct_crop)
    source = _write(image, tmp_path / in_name)
    expected = sitk.ReadImage(str(source))
    out, volumes = tmp_path / out_name, tmp_path / "volumes.json"
    code, stdout, stderr = _run(capsys, "segment", source, "-o", out, "--volumes-json", volumes, "--no-progress")
    assert code == 0, stderr
    seg = sitk.ReadImage(str(out))
    assert _same_geometry(seg, expected) or (  # NIfTI/NRRD headers hold float32 / decimal text
        seg.GetSize() == expected.GetSize()
        and np.allclose(seg.GetSpacing(), expected.GetSpacing(), rtol=1e-6)
        and np.allclose(seg.GetOrigin(), expected.GetOrigin(), atol=1e-4)
        and np.allclose(seg.GetDirection(), expected.GetDirection(), atol=1e-6))
    labels = sitk.GetArrayFromImage(seg)
    data = json.loads(volumes.read_text(encoding="utf-8"))
    voxel_ml = np.prod(expected.GetSpacing()) * abs(np.linalg.det(np.reshape(expected.GetDirection(), (3, 3)))) / 1000
    assert data["volumes_ml"]["liver"] == pytest.approx((labels == 5).sum() * voxel_ml)
    assert (labels == 5).sum() > 1000  # the real model finds the liver in these slices whatever the header
    assert sorted(_listing(tmp_path)) == sorted([in_name, out_name, "volumes.json"])
    if case == "sheared_nrrd":
        assert stderr.count("warning: ") == 1 and "sheared (non-orthogonal) voxel grid" in stderr
        assert any("sheared" in w for w in data["warnings"])
    else:
        assert stderr == "" and data["warnings"] == []


@pytest.mark.parametrize("code", ["LPS", "PIR", "SAL"])
def test_reoriented_copy_gives_the_same_labels_in_physical_space(code, capsys, tmp_path, ct_crop):
    """A file whose axes are flipped or permuted is segmented voxel for voxel like the original."""
    original = _write(ct_crop, tmp_path / "original.nii.gz")
    reoriented = _write(sitk.DICOMOrient(ct_crop, code), tmp_path / "reoriented.nrrd")
    for source in (original, reoriented):
        code_, _, stderr = _run(capsys, "segment", source, "-o", tmp_path / f"seg_{source.stem}.nrrd", "--no-progress")
        assert code_ == 0, stderr
    seg = sitk.ReadImage(str(tmp_path / "seg_original.nii.nrrd"))
    own_code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ct_crop.GetDirection())
    back = sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / "seg_reoriented.nrrd")), own_code)
    assert back.GetSize() == seg.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), seg.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(seg))
    assert (sitk.GetArrayFromImage(seg) == 5).sum() > 1000


def test_gantry_tilted_dicom_is_placed_on_its_true_grid(capsys, tmp_path, dicom_copy):
    """Slice k shifted 0.5 mm * k in x: ITK would stack it square; the label map must follow the tilt."""
    files = _dicom_files(dicom_copy)
    for index, path in enumerate(files):
        _shift_dicom_position(path, 0, 0.5 * index)
    out, volumes = tmp_path / "seg.nrrd", tmp_path / "volumes.json"
    code, _, stderr = _run(capsys, "segment", dicom_copy, "-o", out, "--volumes-json", volumes,
                           "--structures", "liver", "--no-progress")
    assert code == 0, stderr
    assert stderr.count("warning: ") == 1 and "sheared" in stderr
    seg = sitk.ReadImage(str(out))
    positions = sorted((np.array([float(v) for v in _dicom_tag(p, "0020|0032").split("\\")]) for p in files),
                       key=lambda position: position[2])
    first, last = positions[0], positions[-1]
    for index in (0, 7, 19):  # slices sit where their files say (ascending along the normal)
        np.testing.assert_allclose(seg.TransformIndexToPhysicalPoint((0, 0, index)), positions[index], atol=1e-3)
    np.testing.assert_allclose(seg.GetSpacing()[2], np.linalg.norm(last - first) / 19, rtol=1e-6)
    data = json.loads(volumes.read_text(encoding="utf-8"))
    liver = (sitk.GetArrayFromImage(seg) == 5).sum()
    det = abs(np.linalg.det(np.reshape(seg.GetDirection(), (3, 3))))
    assert det < 0.98  # the grid really is sheared (tilt of atan(0.25) ~ 14 degrees)
    assert data["volumes_ml"]["liver"] == pytest.approx(liver * np.prod(seg.GetSpacing()) * det / 1000, rel=1e-6)
    code, _, stderr = _run(capsys, "segment", dicom_copy, "-o", tmp_path / "seg.nii.gz", "--no-progress")
    _assert_refused(code, stderr, EXIT_OUTPUT, "NIfTI cannot store")


def test_tilted_series_listed_out_of_order_is_stacked_along_its_normal(dicom_copy, monkeypatch):
    """The one-pass read stacks GDCM's order; a tilted series whose true order differs is read again in it."""
    from KDSegmentationLib.imaging import image_files

    for index, path in enumerate(_dicom_files(dicom_copy)):
        _shift_dicom_position(path, 0, 0.5 * index)
    expected = image_files.read_image(dicom_copy)
    listed = image_files._series_files
    monkeypatch.setattr(image_files, "_series_files", lambda folder, uid: tuple(reversed(listed(folder, uid))))
    got = image_files.read_image(dicom_copy)
    assert (got.GetOrigin(), got.GetSpacing(), got.GetDirection()) == \
        (expected.GetOrigin(), expected.GetSpacing(), expected.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(expected))


def test_existing_output_is_replaced_whole(capsys, tmp_path, ct_crop):
    source = _write(ct_crop, tmp_path / "ct.nii.gz")
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"an older result")
    code, _, stderr = _run(capsys, "segment", source, "-o", out, "--no-progress")
    assert code == 0, stderr
    assert _same_geometry(sitk.ReadImage(str(out)), ct_crop)
    assert _listing(tmp_path) == ["ct.nii.gz", "seg.nii.gz"]


def test_huge_thread_count_is_clamped_with_one_warning(capsys, tmp_path, ct_crop, monkeypatch):
    from KDSegmentationLib.inference import onnx_engine
    from KDSegmentationLib.inference.run_layout import run_layout
    from KDSegmentationLib.inference.thread_limits import usable_cores

    seen = []
    real_options = onnx_engine._session_options

    def recording(threads, *args, **kwargs):
        seen.append(threads)
        return real_options(threads, *args, **kwargs)

    monkeypatch.setattr(onnx_engine, "_session_options", recording)
    source = _write(ct_crop, tmp_path / "ct.nii.gz")
    code, _, stderr = _run(capsys, "segment", source, "-o", tmp_path / "seg.nii.gz", "--threads", "100000",
                           "--volumes-json", tmp_path / "v.json", "--no-progress", "--device", "cpu")
    assert code == 0, stderr
    cores = usable_cores()
    # The clamped count is split into concurrent calls sharing one session of session_threads.
    assert seen and set(seen) == {run_layout(cores).session_threads} and run_layout(cores).threads == cores
    assert stderr.count("warning: ") == 1 and f"100000 inference threads requested" in stderr
    assert f"using {cores}" in json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))["warnings"][0]
    seen.clear()
    code, _, stderr = _run(capsys, "segment", source, "-o", tmp_path / "seg.nii.gz", "--threads", "1",
                           "--no-progress", "--device", "cpu")
    assert code == 0 and stderr == "" and seen == [1]


def test_ctrl_c_while_reading_stops_at_once(capsys, tmp_path, ct_crop, monkeypatch):
    """A read that never returns (a stalled network mount, simulated by opening a FIFO nobody
    writes) must not hold back Ctrl-C: exit 130, one line, nothing written."""
    import KDSegmentationLib.imaging.image_files as image_files

    # Uncompressed: a plain .nii.gz is decoded by imaging/nifti_gzip, not sitk.ReadImage.
    source = _write(ct_crop, tmp_path / "ct.nii", compress=False)
    stall = _fifo(tmp_path / "stall")
    real_read = image_files.sitk.ReadImage
    monkeypatch.setattr(image_files.sitk, "ReadImage", lambda path, *a: real_read(str(stall)))
    # A process started in the background of a non-interactive shell inherits SIGINT ignored, and
    # Python then keeps it ignored: install Python's own handler so that the test does not hang there.
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code, stdout, stderr = _run(capsys, "segment", source, "-o", tmp_path / "seg.nii.gz", "--no-progress")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous_handler)
        _release_abandoned_reader(stall)
    _assert_refused(code, stderr, EXIT_CANCELLED, "interrupted (Ctrl-C)")
    assert _listing(tmp_path) == ["ct.nii", "stall"]


def _release_abandoned_reader(fifo: Path, timeout: float = 30.0) -> None:
    """Give the detached reader end-of-file and wait for it: it holds an ITK lock while blocked."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readers = [t for t in threading.enumerate() if t.name == "kdseg-read"]
        if not readers:
            return
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # succeeds once the reader waits in open()
        except OSError:  # ENXIO: it has not opened the FIFO yet
            pass
        readers[0].join(0.05)
    pytest.fail("the detached reader thread did not finish")


@pytest.mark.parametrize("case", ["folder_without_dicom", "dicom_missing_slice", "dicom_corrupt_slice"])
def test_no_raw_itk_or_gdcm_output_reaches_the_console(case, tmp_path, ct_crop, dicom_copy):
    """In a real process (file descriptor 2, not pytest's capture): the one error line and nothing else."""
    import subprocess
    import sys

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source, fragment = INPUT_CASES[case](inputs, ct_crop, dicom_copy)
    run = subprocess.run([sys.executable, "-m", "KDSegmentationLib.cli", "segment", str(source), "-o",
                          str(tmp_path / "seg.nii.gz")], capture_output=True, encoding="utf-8", errors="replace",
                         timeout=300)
    assert run.returncode == EXIT_INPUT, run.stderr
    assert run.stderr.startswith("error: ") and fragment in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "seg.nii.gz").exists()

