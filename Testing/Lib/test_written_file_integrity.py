"""Nothing lost, nothing silently wrong when writing: full disks, read-only folders, quota, short writes.

Real failures first: small tmpfs mounts (the suite runs as root in CI; the mount is made
inside the test's own folder and removed afterwards) that are full, nearly full,
read-only or out of inodes. Where mounting is impossible (not root, no tmpfs), the same
assertions run against writers patched to do what ITK's NIfTI writer does on a full
disk (return normally after writing a short file) — the failing-write path is exercised
either way, never skipped. The fallback writers are also tested on their own, always.

Every case: exit code 7 (or OutputError/WriteVerificationError from the Lib), one line,
nothing under the final name, no temporary left, an existing file left unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import KDSegmentationLib.imaging.image_files as image_files
from KDSegmentationLib.atomic_files import write_text_atomic
from KDSegmentationLib.cli import main
from KDSegmentationLib.errors import EXIT_OUTPUT, OutputError, WriteVerificationError
from KDSegmentationLib.imaging.image_files import write_image_atomic

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_PAGE = 4096


@pytest.fixture(scope="module")
def label_map(shared_data) -> sitk.Image:
    """The real TotalSegmentator label map of the sample CT as uint8 (122 x 101 x 112, many labels)."""
    seg = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))
    return sitk.Cast(seg, sitk.sitkUInt8)


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return run.returncode == 0


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True, timeout=30)


class SmallDisk:
    """A folder whose file system has ``free`` bytes left: a real tmpfs, or a patched writer.

    Args:
        folder: where outputs go.
        real: True on a real tmpfs mount; False when writes are cut short by patched writers.
    """

    def __init__(self, folder: Path, real: bool) -> None:
        self.folder = folder
        self.real = real


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """Factory: ``small_disk(free_bytes, existing={name: bytes})`` -> :class:`SmallDisk`."""
    mounted = []

    def make(free: int, existing=None) -> SmallDisk:
        folder = tmp_path / f"disk{len(mounted)}"
        existing = existing or {}
        used = sum(-(-len(d) // _PAGE) * _PAGE for d in existing.values())
        # One page of filler: a tmpfs of size 0 would have no limit at all.
        real = _mount_tmpfs(folder, f"size={used + free + _PAGE},mode=0755")
        if real:
            mounted.append(folder)
        else:
            folder.mkdir(parents=True, exist_ok=True)
        for name, data in existing.items():
            (folder / name).write_bytes(data)
        if real:
            (folder / ".filler").write_bytes(b"\0" * _PAGE)
            stats = os.statvfs(folder)
            assert stats.f_bavail * stats.f_frsize == free
        else:
            _patch_writers_to_stop_after(monkeypatch, free, folder)
        return SmallDisk(folder, real)

    yield make
    for folder in mounted:
        _unmount(folder)


def _patch_writers_to_stop_after(monkeypatch, free: int, folder: Path) -> None:
    """What ITK's NIfTI writer does on a full disk: write what fits and return without an error
    (for files in ``folder`` only)."""
    real_write = image_files.sitk.WriteImage

    def short_write(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        if Path(path).parent == folder:
            with open(path, "r+b") as handle:
                handle.truncate(min(free, os.path.getsize(path)))

    monkeypatch.setattr(image_files.sitk, "WriteImage", short_write)
    real_write_bytes = Path.write_bytes

    def short_write_bytes(self, data):
        return real_write_bytes(self, data[:free] if self.parent == folder else data)

    monkeypatch.setattr(Path, "write_bytes", short_write_bytes)


def _size_of(image: sitk.Image, suffix: str, tmp_path: Path) -> int:
    probe = tmp_path / f"probe{suffix}"
    sitk.WriteImage(image, str(probe), True)
    return probe.stat().st_size


def _assert_only(folder: Path, names) -> None:
    left = sorted(p.name for p in folder.iterdir() if p.name not in (".filler", "lost+found"))
    assert left == sorted(names), left


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_label_map_on_a_full_disk_is_not_left_and_the_old_file_stays(suffix, small_disk, label_map, tmp_path):
    needed = _size_of(label_map, suffix, tmp_path)
    old = b"previous result " * 10
    disk = small_disk(free=max(_PAGE, (needed // 2) // _PAGE * _PAGE), existing={f"seg{suffix}": old})
    target = disk.folder / f"seg{suffix}"
    with pytest.raises(OutputError) as raised:
        write_image_atomic(label_map, target)
    message = str(raised.value)
    assert raised.value.exit_code == EXIT_OUTPUT and "\n" not in message
    assert str(target) in message and "free" in message  # names the file and the free space
    assert target.read_bytes() == old
    _assert_only(disk.folder, [f"seg{suffix}"])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_label_map_that_fits_is_written_and_read_back_equal(suffix, small_disk, label_map, tmp_path):
    needed = _size_of(label_map, suffix, tmp_path)
    disk = small_disk(free=(needed // _PAGE + 3) * _PAGE)
    target = write_image_atomic(label_map, disk.folder / f"seg{suffix}")
    written = sitk.ReadImage(str(target))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(label_map))
    _assert_only(disk.folder, [f"seg{suffix}"])


def test_kdseg_on_a_nearly_full_disk_exits_7_without_the_success_message(small_disk, capsys, tmp_path, shared_data):
    source = shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    disk = small_disk(free=_PAGE)
    code = main(["segment", str(source), "-o", str(disk.folder / "seg.nii"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == EXIT_OUTPUT, captured.err
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1
    assert "seg.nii" in captured.err and "NWAD" not in captured.err
    assert captured.out == ""  # no "Segmented ..." and no volumes
    _assert_only(disk.folder, [])


def test_volumes_json_on_a_full_disk_exits_7_and_leaves_no_json(small_disk, capsys, tmp_path, shared_data):
    source = shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    disk = small_disk(free=0)
    out = tmp_path / "seg.nii.gz"
    code = main(["segment", str(source), "-o", str(out), "--volumes-json", str(disk.folder / "v.json"),
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == EXIT_OUTPUT, captured.err
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1
    assert "v.json" in captured.err
    _assert_only(disk.folder, [])


def test_text_files_are_verified_byte_for_byte(small_disk):
    """The registry, JSON and logs go through write_text_atomic: a short write never lands."""
    text = json.dumps({"models": ["x" * 100] * 200}, indent=2)
    disk = small_disk(free=_PAGE, existing={"registry.json": b"{}"})
    with pytest.raises((OutputError, OSError)) as raised:
        write_text_atomic(disk.folder / "registry.json", text)
    if isinstance(raised.value, OSError):  # a real full disk: Python's write raises ENOSPC itself
        assert raised.value.errno == errno.ENOSPC and disk.real
    else:
        assert isinstance(raised.value, WriteVerificationError) and "bytes" in str(raised.value)
    assert (disk.folder / "registry.json").read_bytes() == b"{}"
    _assert_only(disk.folder, ["registry.json"])


# --- the fallback writers, always: what a silent short write looks like -----------------------

@pytest.mark.parametrize("suffix", SUFFIXES)
def test_silently_truncated_label_map_is_refused(suffix, monkeypatch, label_map, tmp_path):
    needed = _size_of(label_map, suffix, tmp_path)
    target = tmp_path / "out" / f"seg{suffix}"
    target.parent.mkdir()
    _patch_writers_to_stop_after(monkeypatch, needed // 2, target.parent)
    with pytest.raises(WriteVerificationError) as raised:
        write_image_atomic(label_map, target)
    assert raised.value.exit_code == EXIT_OUTPUT and "was not written" in str(raised.value)
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])  # .nii.gz: compared piece by piece while decompressing
def test_written_label_map_with_a_changed_voxel_is_refused(monkeypatch, label_map, tmp_path, suffix):
    """A writer that completes but stores a different voxel (bit rot, a buggy writer) is caught by the read-back."""
    real_write = image_files.sitk.WriteImage

    def corrupting(image, path, *args, **kwargs):
        changed = sitk.Image(image)
        changed[60, 50, 56] = int(changed[60, 50, 56]) + 1
        real_write(changed, path, *args, **kwargs)

    monkeypatch.setattr(image_files.sitk, "WriteImage", corrupting)
    target = tmp_path / f"seg{suffix}"
    with pytest.raises(WriteVerificationError, match="different voxel values"):
        write_image_atomic(label_map, target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz"])
def test_written_label_map_with_a_changed_origin_is_refused(monkeypatch, label_map, tmp_path, suffix):
    real_write = image_files.sitk.WriteImage

    def shifted(image, path, *args, **kwargs):
        moved = sitk.Image(image)
        moved.SetOrigin([o + 0.5 for o in image.GetOrigin()])
        real_write(moved, path, *args, **kwargs)

    monkeypatch.setattr(image_files.sitk, "WriteImage", shifted)
    with pytest.raises(WriteVerificationError, match="spacing, origin or direction"):
        write_image_atomic(label_map, tmp_path / f"seg{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_quota_exceeded_while_writing_json_is_one_line_exit_7(monkeypatch, capsys, tmp_path):
    """tmpfs here has no quota support, so EDQUOT comes from the write itself."""
    from KDSegmentationLib import cli

    def over_quota(self, data):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(Path, "write_bytes", over_quota)
    with pytest.raises(OutputError) as raised:
        cli._write_json_atomic({"a": 1}, tmp_path / "v.json")
    assert raised.value.exit_code == EXIT_OUTPUT and "quota" in str(raised.value).lower()
    assert list(tmp_path.iterdir()) == []


# --- read-only and out-of-inodes mounts: refused before any work ----------------------------------

@pytest.mark.parametrize("options, expected", [("size=64k,ro", "Read-only file system"),
                                               ("size=1M,nr_inodes=1", "No space left on device")])
def test_read_only_or_inode_exhausted_output_folder_is_refused_before_reading(options, expected, capsys, tmp_path,
                                                                             monkeypatch, shared_data):
    from KDSegmentationLib.imaging import image_files as files

    folder = tmp_path / "mnt"
    real = _mount_tmpfs(folder, options)
    try:
        if not real:  # no mount possible: the same refusal from a folder files cannot be created in
            def refused(path, *args, **kwargs):
                raise OSError(errno.EROFS if "ro" in options else errno.ENOSPC, expected)

            monkeypatch.setattr(files, "temporary_sibling", refused)
        monkeypatch.setattr(files, "read_image", lambda *a, **k: pytest.fail("read before the output was checked"))
        source = shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"
        code = main(["segment", str(source), "-o", str(folder / "seg.nii.gz"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == EXIT_OUTPUT and expected in err and len(err.strip().splitlines()) == 1
        assert list(folder.iterdir()) == []
    finally:
        if real:
            _unmount(folder)
