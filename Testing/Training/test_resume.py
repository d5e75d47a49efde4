"""Fault tolerance: SIGKILL then --resume ends with the weights of an uninterrupted run; SIGTERM checkpoints
and exits non-zero with resume instructions; runs are never silently overwritten or resumed with another config."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdseg_train.checkpoint import latest_checkpoint, load_checkpoint
from kdseg_train.cli import main as kdseg_train

STEPS = 16


def write_config(tmp_path, shared_data, name, num_workers=0, **train):
    ts = shared_data / "ct" / "totalsegmentator_example"
    sm = {"image": str(ts / "example_ct_sm.nii.gz"), "label": str(ts / "example_seg.nii.gz"),
          "remap": "totalsegmentator"}
    cfg = {
        # dropout 0.1 stays on: the resumed run must also replay the dropout masks
        "model": {"name": "student-shsa-tiny", "num_classes": 9, "img_size": 32},
        "data": {"train": [dict(sm, name="train", slices=[0.0, 0.8])], "val": [dict(sm, name="val", slices=[0.8, 1.0])],
                 "batch_size": 4, "num_workers": num_workers},
        "optim": {"lr": 0.05},
        "train": dict({"max_steps": STEPS, "checkpoint_every": 4, "val_every": 10, "threads": 1, "seed": 11,
                       "figures": False, "tensorboard": False}, **train),
        "output": str(tmp_path / name),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def latest_step(run):
    pointer = run / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return 0
    try:
        return json.loads(pointer.read_text(encoding="utf-8"))["step"]
    except ValueError:  # never happens with atomic writes; tolerate a reader race anyway
        return 0


def start(config):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "kdseg_train.cli", "train", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")


def wait_for_checkpoint(proc, run, min_step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if latest_step(run) >= min_step:
            return
        time.sleep(0.02)
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"no checkpoint at step >= {min_step} (exit code {proc.poll()}): {err[-2000:]}")


def assert_same_run(reference, resumed):
    a = load_file(str(reference / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)

    def rows(run, name):
        with open(run / name, newline="", encoding="utf-8") as handle:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(handle)]

    assert rows(reference, "train_log.csv") == rows(resumed, "train_log.csv")  # no duplicated or lost steps
    assert rows(reference, "val_log.csv") == rows(resumed, "val_log.csv")


@pytest.mark.slow
def test_sigkill_and_sigterm_then_resume_reproduce_an_uninterrupted_run(tmp_path, shared_data):
    reference = tmp_path / "reference"
    assert kdseg_train(["train", str(write_config(tmp_path, shared_data, "reference"))]) == 0

    # SIGKILL right after a checkpoint: nothing can be saved, the last checkpoint must be enough.
    killed_cfg = write_config(tmp_path, shared_data, "killed", num_workers=0)
    proc = start(killed_cfg)
    wait_for_checkpoint(proc, tmp_path / "killed", 8)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    step = latest_step(tmp_path / "killed")
    assert 8 <= step < STEPS, "the run must be killed mid-way"
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "killed" / "checkpoints"))
    assert ckpt.step == step and ckpt.optimizer["state"] and len(ckpt.rng_states) == 1
    assert kdseg_train(["train", str(killed_cfg), "--resume"]) == 0
    assert_same_run(reference, tmp_path / "killed")

    # SIGTERM (what schedulers send): checkpoint at the current step, non-zero exit, resume hint.
    # Two DataLoader workers here: augmentation and order must not depend on the worker count.
    term_cfg = write_config(tmp_path, shared_data, "terminated", num_workers=2)
    proc = start(term_cfg)
    wait_for_checkpoint(proc, tmp_path / "terminated", 4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "--resume" in err and "checkpoint saved" in err
    stopped = latest_step(tmp_path / "terminated")
    assert 4 <= stopped < STEPS
    assert not (tmp_path / "terminated" / "final").exists()
    assert kdseg_train(["train", str(term_cfg), "--resume"]) == 0
    assert_same_run(reference, tmp_path / "terminated")
    # only the newest checkpoints are kept, and no temporary folder is left behind
    names = sorted(p.name for p in (tmp_path / "terminated" / "checkpoints").iterdir())
    assert names == ["latest.json", f"step-{STEPS - 4:08d}", f"step-{STEPS:08d}"]


def test_runs_are_not_overwritten_or_resumed_with_another_config(tmp_path, shared_data, capsys):
    cfg = write_config(tmp_path, shared_data, "run", max_steps=4, val_every=100)
    assert kdseg_train(["train", str(cfg), "--resume"]) == 2
    assert "holds no complete checkpoint" in capsys.readouterr().err
    assert kdseg_train(["train", str(cfg)]) == 0
    assert kdseg_train(["train", str(cfg)]) == 2
    assert "already holds a run; add --resume" in capsys.readouterr().err
    assert kdseg_train(["train", str(cfg), "--resume", "--set", "optim.lr=0.1"]) == 2
    assert "optim.lr: 0.05 -> 0.1" in capsys.readouterr().err
    # a finished run resumed again just re-writes final/ from its last checkpoint
    assert kdseg_train(["train", str(cfg), "--resume", "--set", "data.num_workers=1"]) == 0
    # validation cases only change what is measured: free on resume, unlike the training data
    assert kdseg_train(["train", str(cfg), "--resume", "--set", "data.val=[]"]) == 0
    capsys.readouterr()
    assert kdseg_train(["train", str(cfg), "--resume", "--set", "data.batch_size=3"]) == 2
    assert "data.batch_size:" in capsys.readouterr().err
