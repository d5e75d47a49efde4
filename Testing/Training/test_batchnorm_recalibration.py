"""BatchNorm statistics recomputed after training over the un-augmented training slices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdseg_train.batchnorm_recalibration import batchnorm_layers, recalibrate_batchnorm
from kdseg_train.checkpoint import latest_checkpoint, load_checkpoint
from kdseg_train.config import load_config
from kdseg_train.export import load_safetensors_model
from kdseg_train.models import create_model
from kdseg_train.run_data import build_training_dataset, model_grid
from kdseg_train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


def test_statistics_are_the_plain_average_over_all_batches():
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
    model = nn.Sequential(conv, norm, nn.Dropout(0.5))
    batches = [torch.randn(4, 2, 8, 8) * (i + 1) + i for i in range(3)]  # batches of different statistics
    assert recalibrate_batchnorm(model, iter(batches)) == 12
    with torch.no_grad():
        per_batch = [conv(b).transpose(0, 1).reshape(3, -1) for b in batches]
    # Equal-sized batches: the mean over all of them; the variance a training-mode BatchNorm
    # normalises with, averaged (not an exponential average dominated by the last batches).
    torch.testing.assert_close(norm.running_mean, torch.stack([f.mean(1) for f in per_batch]).mean(0),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, torch.stack([f.var(1, unbiased=True) for f in per_batch]).mean(0),
                               rtol=1e-4, atol=1e-4)
    assert norm.momentum == 0.1 and not model.training and not norm.training


def test_models_without_batchnorm_are_left_alone_and_no_data_is_an_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_batchnorm(model, iter([])) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="no training image"):
        recalibrate_batchnorm(nn.BatchNorm2d(2), iter([]))


def test_training_ends_with_the_statistics_of_the_clean_training_slices(shared_data, tmp_path, monkeypatch):
    """student_nokd_v2.yaml (recalibrate_batchnorm: true) for 2 steps on real CT, 32 px."""
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "Training" / "configs" / "student_nokd_v2.yaml")
    assert cfg["train"]["recalibrate_batchnorm"] and cfg["model"]["name"] == "student-shsa-lite-bn"
    ts = shared_data / "ct" / "totalsegmentator_example"
    cfg["model"].update(img_size=32, pretrained=None)
    cfg["data"]["train"] = [{"name": "head", "image": str(ts / "example_ct_sm.nii.gz"),
                             "label": str(ts / "example_seg.nii.gz"), "remap": "totalsegmentator"}]
    cfg["data"].update(val=[], batch_size=2, num_workers=0)
    cfg["train"].update(max_steps=2, checkpoint_every=2, threads=1, figures=False, tensorboard=False, device="cpu",
                        amp=False)
    cfg["output"] = str(tmp_path / "run")
    final = Trainer(cfg).run()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))

    # The last checkpoint holds the network before recalibration; redo it by hand.
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    model = create_model(cfg["model"]["name"], img_size=32)
    model.load_state_dict({k[len("model."):]: v for k, v in ckpt.weights.items() if k.startswith("model.")})
    trained_means = [layer.running_mean.clone() for layer in batchnorm_layers(model)]
    clean = build_training_dataset(dict(cfg["data"], augment=False), 32, 9, cfg["train"]["seed"],
                                   grid=model_grid(cfg["model"]))
    images = torch.stack([clean[i][0] for i in range(len(clean))])
    assert summary["batchnorm_recalibration_slices"] == len(images)
    recalibrate_batchnorm(model, (images[i:i + 2] for i in range(0, len(images), 2)))

    saved = batchnorm_layers(load_safetensors_model(final))
    assert len(saved) == len(trained_means) > 0
    for layer, expected, trained in zip(saved, batchnorm_layers(model), trained_means):
        torch.testing.assert_close(layer.running_mean, expected.running_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.running_var, expected.running_var, rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(layer.running_mean, trained) for layer, trained in zip(saved, trained_means))
