"""Files and folders the training code writes get the user's umask and leave no temporaries."""

import os
import stat

import pytest
import torch
from torch import nn

from kdseg_train.checkpoint import capture_rng_state, latest_checkpoint, load_checkpoint, save_checkpoint
from kdseg_train.config import DEFAULTS, save_config
from kdseg_train.run_logs import CsvLog

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_config_checkpoints_and_resumed_logs_honour_the_umask(tmp_path, umask_027):
    config = save_config(DEFAULTS, tmp_path / "config.yaml")

    module = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoints = tmp_path / "checkpoints"
    for step in (1, 2, 2):  # the repeated step replaces its folder whole
        save_checkpoint(checkpoints, step, module, optimizer, scheduler, None, [capture_rng_state()], keep=2)

    log = CsvLog(tmp_path / "train_log.csv", ["step", "loss"])
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 0.5})
    log.close()
    CsvLog(tmp_path / "train_log.csv", ["step", "loss"], resume_step=2).close()

    newest = latest_checkpoint(checkpoints)
    assert newest.name == "step-00000002" and load_checkpoint(newest).step == 2
    assert _mode(config) == 0o640
    assert _mode(newest) == 0o750
    assert {p.name: _mode(p) for p in newest.iterdir()} == {"weights.safetensors": 0o640, "state.pt": 0o640,
                                                            "meta.json": 0o640}
    assert _mode(checkpoints / "latest.json") == 0o640
    assert _mode(tmp_path / "train_log.csv") == 0o640
    assert (tmp_path / "train_log.csv").read_text().split() == ["step,loss", "1,0.5", "2,0.5"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest.json", "step-00000001", "step-00000002"]
    assert not [p for p in tmp_path.rglob(".*")]
