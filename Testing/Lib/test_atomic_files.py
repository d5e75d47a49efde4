"""Atomic writes of files and folders: complete new content or the old one, never a part or a leftover."""

import multiprocessing
import os
import stat

import pytest

from KDSegmentationLib import atomic_files
from KDSegmentationLib.atomic_files import (atomic_directory, atomic_file, temporary_sibling, write_text_atomic)
from KDSegmentationLib.errors import EXIT_OUTPUT, OutputError, WriteVerificationError

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_write_replaces_the_content_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "card.json"
    path.write_text("old", encoding="utf-8")
    assert write_text_atomic(path, "new ✓\n") == path
    assert path.read_text(encoding="utf-8") == "new ✓\n"
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_a_failed_rename_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "card.json"
    path.write_text("old", encoding="utf-8")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "new")
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_an_exception_while_writing_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="exporter failed"):
        with atomic_file(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("exporter failed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_temporary_names_are_hidden_unique_siblings_and_can_keep_the_extension(tmp_path):
    plain = temporary_sibling(tmp_path / "seg.nii.gz")
    kept = temporary_sibling(tmp_path / "seg.nii.gz", keep_suffix=True)
    again = temporary_sibling(tmp_path / "seg.nii.gz", keep_suffix=True)
    assert plain.parent == tmp_path and plain.name.startswith(".seg.nii.gz.") and plain.name.endswith(".tmp")
    assert kept.name.startswith(".seg.") and kept.name.endswith(".tmp.nii.gz")
    assert kept != again and kept.is_file() and again.is_file()
    with pytest.raises(FileNotFoundError):
        temporary_sibling(tmp_path / "missing" / "x.json")


def _recreate_private(path):
    if path.exists():
        path.unlink()
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


@posix_only
def test_files_and_folders_get_the_umask_not_mkstemps_0600(tmp_path, umask_027):
    text = write_text_atomic(tmp_path / "config.yaml", "a: 1\n", fsync=True)
    with atomic_file(tmp_path / "seg.nii.gz", keep_suffix=True) as tmp:
        tmp.write_bytes(b"x")
    with atomic_directory(tmp_path / "step-00000001", fsync=True) as folder:
        (folder / "meta.json").write_text("{}", encoding="utf-8")
        _recreate_private(folder / "weights.safetensors")
    with atomic_file(tmp_path / "model.safetensors") as tmp:
        _recreate_private(tmp)  # as safetensors' writer does
    assert stat.S_IMODE(text.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "seg.nii.gz").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "step-00000001").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "step-00000001" / "meta.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "step-00000001" / "weights.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o640


def _write_many(path, text, rounds):
    for _ in range(rounds):
        write_text_atomic(path, text)


def test_concurrent_writers_of_one_target_never_collide(tmp_path):
    path = tmp_path / "train.txt"
    texts = ["a\n" * 20000, "b\n" * 30000]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(path, text, 40)) for text in texts]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert path.read_text(encoding="utf-8") in texts
    assert [p.name for p in tmp_path.iterdir()] == ["train.txt"]


def test_fsync_syncs_the_content_and_the_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def counting(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        real(fd)

    monkeypatch.setattr(atomic_files.os, "fsync", counting)
    write_text_atomic(tmp_path / "latest.json", "{}")
    assert synced == []
    write_text_atomic(tmp_path / "latest.json", "{}", fsync=True)
    assert len(synced) == 2
    if os.path.exists("/proc/self/fd"):
        assert synced[0].startswith(str(tmp_path / ".latest.json.")) and synced[1] == str(tmp_path)


def test_a_rejected_verification_removes_the_temporary_and_keeps_the_target(tmp_path):
    path = tmp_path / "seg.nii.gz"
    path.write_bytes(b"old")
    seen = []

    def read_back(tmp):
        seen.append(tmp.read_bytes())
        raise ValueError("read-back differs in 3 voxels")

    with pytest.raises(WriteVerificationError, match="read-back differs in 3 voxels") as error:
        write_text_atomic(path, "new", verify=read_back)
    assert seen == [b"new"]
    assert isinstance(error.value, OutputError) and error.value.exit_code == EXIT_OUTPUT == 7
    assert str(path) in str(error.value) and error.value.hint
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


def test_an_accepted_verification_lets_the_write_through(tmp_path):
    checked = []
    write_text_atomic(tmp_path / "a.json", "{}", verify=lambda tmp: checked.append(tmp.read_text()))
    assert checked == ["{}"] and (tmp_path / "a.json").read_text() == "{}"


def test_a_folder_is_replaced_whole(tmp_path):
    final = tmp_path / "step-00000200"
    final.mkdir()
    (final / "stale.bin").write_bytes(b"old")
    with atomic_directory(final) as folder:
        assert not (folder / "stale.bin").exists()
        (folder / "model.safetensors").write_bytes(b"new")
    assert sorted(p.name for p in final.iterdir()) == ["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000200"]


@pytest.mark.parametrize("failure", ["while_writing", "verify", "rename"])
def test_a_failed_folder_write_keeps_the_old_folder(tmp_path, monkeypatch, failure):
    final = tmp_path / "step-00000200"
    final.mkdir()
    (final / "model.safetensors").write_bytes(b"old")
    real_rename = os.rename

    def interrupted_rename(src, dst):
        if str(src).endswith(".tmp"):
            raise KeyboardInterrupt
        real_rename(src, dst)

    if failure == "rename":
        monkeypatch.setattr(atomic_files.os, "rename", interrupted_rename)

    def reject(folder):
        raise ValueError("incomplete")

    with pytest.raises((RuntimeError, KeyboardInterrupt, WriteVerificationError)):
        with atomic_directory(final, verify=reject if failure == "verify" else None) as folder:
            (folder / "model.safetensors").write_bytes(b"half")
            if failure == "while_writing":
                raise RuntimeError("disk full")
    assert (final / "model.safetensors").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000200"]
