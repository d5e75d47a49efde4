"""Atomic text writes: complete new content or the old file, never a part or a leftover."""

import os
import stat

import pytest

from KDSegmentationLib import atomic_files
from KDSegmentationLib.atomic_files import temporary_sibling, write_text_atomic


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


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_temporary_sibling_is_hidden_in_the_same_folder_with_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        tmp = temporary_sibling(tmp_path / "model.onnx", suffix=".tmp")
    finally:
        os.umask(previous)
    assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.") and tmp.suffix == ".tmp"
    assert stat.S_IMODE(tmp.stat().st_mode) == 0o640
    with pytest.raises(FileNotFoundError):
        temporary_sibling(tmp_path / "missing" / "x.json")
