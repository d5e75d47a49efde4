"""Checkpoints and exported weights are verified before they replace what was there.

A full disk can cut ``safetensors``' or ``torch.save``'s output short; the atomic writer's
verify step must then refuse the new folder/file and keep the previous one.
"""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import kdseg_train.checkpoint as checkpoint
from kdseg_train.checkpoint import capture_rng_state, latest_checkpoint, save_checkpoint
from KDSegmentationLib.errors import WriteVerificationError
from KDSegmentationLib.written_file_checks import (WrittenFileMismatch, check_safetensors_complete,
                                                   check_zip_complete)


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_safetensors_and_torch_files_cut_short_are_recognised(tmp_path):
    weights, state = tmp_path / "w.safetensors", tmp_path / "s.pt"
    save_file({"a": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3, 4)}, str(weights))
    torch.save({"step": 3, "t": torch.zeros(500)}, state)
    check_safetensors_complete(weights)
    check_zip_complete(state)
    for keep in (4, 60, weights.stat().st_size - 1):
        _truncate(weights, keep)
        with pytest.raises(WrittenFileMismatch):
            check_safetensors_complete(weights)
        save_file({"a": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3, 4)}, str(weights))
    _truncate(state, state.stat().st_size // 2)
    with pytest.raises(WrittenFileMismatch, match="zip"):
        check_zip_complete(state)


def test_checkpoint_cut_short_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    module = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 1, module, optimizer, scheduler, None, [capture_rng_state()])
    before = sorted(p.name for p in folder.iterdir())
    real_save = torch.save

    def short_save(obj, handle, *args, **kwargs):  # what a full disk may leave behind without an error
        real_save(obj, handle, *args, **kwargs)
        handle.flush()
        handle.truncate(100)

    monkeypatch.setattr(checkpoint.torch, "save", short_save)
    with pytest.raises(WriteVerificationError, match="zip"):
        save_checkpoint(folder, 2, module, optimizer, scheduler, None, [capture_rng_state()])
    assert sorted(p.name for p in folder.iterdir()) == before  # no step-2 folder, no temporary
    assert latest_checkpoint(folder).name == "step-00000001"
