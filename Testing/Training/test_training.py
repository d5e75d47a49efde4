"""Train, distil, resume after SIGKILL, export and evaluate at tiny scale on real CT."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdseg_train.cli import main as train_main
from kdseg_train.data import load_ct_volume, remap_labels
from kdseg_train.evaluation import hd95, organ_metrics

TINY = {"name": "student-shsa-tiny", "num_classes": 9, "img_size": 32}


def _config(tmp_path, shared_data, name, steps, **extra):
    ts = shared_data / "ct" / "totalsegmentator_example"
    cfg = {
        "model": dict(TINY),
        "data": {"train": [{"name": "ct_sm", "image": str(ts / "example_ct_sm.nii.gz"),
                            "label": str(ts / "example_seg.nii.gz"), "remap": "totalsegmentator"}],
                 "val": [{"name": "ct_sm_val", "image": str(ts / "example_ct_sm.nii.gz"),
                          "label": str(ts / "example_seg.nii.gz"), "remap": "totalsegmentator",
                          "slices": [0.8, 1.0]}],
                 "batch_size": 4},
        "optim": {"lr": 0.05},
        "train": {"max_steps": steps, "checkpoint_every": 2, "val_every": steps, "threads": 1, "seed": 3},
        "output": str(tmp_path / name),
    }
    cfg.update(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _losses(run):
    rows = (run / "train_log.csv").read_text(encoding="utf-8").splitlines()[1:]
    return [float(r.split(",")[2]) for r in rows]


def test_train_lowers_loss_and_distill_runs_then_export_segments_real_ct(tmp_path, shared_data, capsys):
    assert train_main(["train", str(_config(tmp_path, shared_data, "teacher", 12))]) == 0
    losses = _losses(tmp_path / "teacher")
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    saved = yaml.safe_load((tmp_path / "teacher" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["max_steps"] == 12  # the resolved config is saved with the run
    figures = sorted(p.name for p in (tmp_path / "teacher" / "figures").iterdir())
    assert figures == ["losses.png", "overlay_ct_sm_val.png", "validation_dice.png"]
    assert any((tmp_path / "teacher" / "tensorboard").iterdir())
    distill = _config(tmp_path, shared_data, "student", 8, distill={
        "teacher": str(tmp_path / "teacher"), "pixel_kd": {"weight": 1.0, "temperature": 4.0},
        "attention_kd": {"weight": 0.5}})
    assert train_main(["distill", str(distill)]) == 0
    header, *rows = (tmp_path / "student" / "train_log.csv").read_text(encoding="utf-8").splitlines()
    columns = header.split(",")
    assert columns[:6] == ["step", "lr", "total", "seg", "pixel_kd", "attention_kd"]
    for term in ("pixel_kd", "attention_kd"):
        assert all(float(r.split(",")[columns.index(term)]) > 0 for r in rows)
    assert np.mean(_losses(tmp_path / "student")[-3:]) < np.mean(_losses(tmp_path / "student")[:3])

    release = tmp_path / "release"
    assert train_main(["export", str(tmp_path / "student"), str(release), "--model-id", "tiny-test",
                       "--title", "Tiny test"]) == 0
    from KDSegmentationLib.pipeline import Segmenter, segment_image
    import SimpleITK as sitk

    segmenter = Segmenter.from_registry(registry=release / "registry.json", device="cpu", allow_download=False)
    assert segmenter.card.input.height == 32 and segmenter.card.training["steps"] == 8
    ct = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz"))
    result = segment_image(ct, segmenter)
    assert result.labels.GetSize() == ct.GetSize()

    report = tmp_path / "eval"
    capsys.readouterr()
    assert train_main(["evaluate", str(release / "registry.json"), str(distill), "-o", str(report)]) == 0
    data = json.loads((report / "evaluation.json").read_text(encoding="utf-8"))
    assert "ct_sm_val" in data["cases"] and "liver" in data["cases"]["ct_sm_val"]
    assert "| liver |" in (report / "evaluation.md").read_text(encoding="utf-8")


def test_resume_after_sigkill_reproduces_an_uninterrupted_run(tmp_path, shared_data):
    full = _config(tmp_path, shared_data, "full", 8)
    assert train_main(["train", str(full)]) == 0
    killed = _config(tmp_path, shared_data, "killed", 8)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "kdseg_train.cli", "train", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.exists():
            step = int(torch.load(ckpt, weights_only=True)["step"])
            if step >= 4:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = int(torch.load(ckpt, weights_only=True)["step"])
    assert 0 < step < 8, "the run must be killed mid-way"
    assert train_main(["train", str(killed), "--resume"]) == 0
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_refuses_to_overwrite_a_run_without_resume(tmp_path, shared_data):
    cfg = _config(tmp_path, shared_data, "run", 2)
    assert train_main(["train", str(cfg)]) == 0
    with pytest.raises(FileExistsError, match="--resume"):
        train_main(["train", str(cfg)])


def test_hd95_matches_a_direct_implementation_and_transunet_rules():
    from scipy.ndimage import binary_erosion, distance_transform_edt

    rng = np.random.default_rng(0)
    a = np.zeros((12, 20, 20), bool)
    b = np.zeros((12, 20, 20), bool)
    a[3:9, 4:14, 5:15] = True
    b[4:10, 6:15, 4:12] = True
    b[rng.random(b.shape) > 0.995] = True

    def surface_distances(x, y, spacing):
        sx = x & ~binary_erosion(x)
        sy = y & ~binary_erosion(y)
        return distance_transform_edt(~sy, sampling=spacing)[sx]

    spacing = (3.0, 1.0, 0.5)
    for sp in (None, spacing):
        ref = max(np.percentile(surface_distances(a, b, sp), 95), np.percentile(surface_distances(b, a, sp), 95))
        assert abs(hd95(a, b, sp) - ref) < 1e-4 * max(ref, 1)
    labels = np.zeros((4, 8, 8), np.uint8)
    pred = labels.copy()
    pred[1:3, 2:5, 2:5] = 5  # liver predicted where the ground truth has none
    m = organ_metrics(pred, labels, (1, 1, 1))
    assert m["liver"]["dice"] == 1.0 and m["liver"]["hd95_voxels"] == 0.0
    assert m["spleen"]["dice"] == 0.0 and m["spleen"]["hd95_voxels"] == 0.0


def test_real_labels_remap_to_synapse_order(shared_data):
    volume = load_ct_volume(shared_data / "ct" / "dcmqi_3slice" / "ct-3slice",
                            shared_data / "ct" / "dcmqi_3slice" / "liver_spine_seg.nrrd", "dcmqi",
                            unlabeled=[1, 2, 3, 4, 6, 7, 8])
    assert set(np.unique(volume.labels)) == {0, 5, 255}  # spine -> background, unknown -> ignore
    assert remap_labels(np.array([0, 1, 2, 3, 52, 99]), {52: 1, 1: 7}).tolist() == [0, 7, 0, 0, 1, 0]
