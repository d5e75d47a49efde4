"""`torchrun --nproc_per_node=2 -m kdseg_train.cli train` on CPU (gloo): one writer for logs, checkpoints, weights."""

from __future__ import annotations

import pytest

from test_ddp import WORLD_SIZE, _config, _torchrun


@pytest.mark.slow
def test_torchrun_training_writes_logs_and_checkpoints_from_rank_0_only(tmp_path, shared_data):
    config = _config(tmp_path, shared_data, "run")
    result = _torchrun("-m", "kdseg_train.cli", "train", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert result.stdout.count("finished: weights in") == 1
    rows = (run / "train_log.csv").read_text(encoding="utf-8").splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3"]  # one writer, no duplicated rows
    from kdseg_train.checkpoint import latest_checkpoint, load_checkpoint

    ckpt = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert ckpt.step == 3 and ckpt.meta["world_size"] == WORLD_SIZE and len(ckpt.rng_states) == WORLD_SIZE
    assert (run / "final" / "model.safetensors").is_file()
