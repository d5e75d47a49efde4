"""`kdseg-train train` and `distill` at tiny scale on real CT (NIfTI + DICOM series) and real video frames."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from kdseg_train.cli import main as kdseg_train
from kdseg_train.config import ConfigError, load_config

TINY_MODEL = {"name": "student-shsa-tiny", "num_classes": 9, "img_size": 32}


def write_config(tmp_path, shared_data, name, steps, **sections):
    """A tiny run on real CT: train on most of example_ct_sm + the DICOM series, validate on held-back slices
    of example_ct_sm and on the dcmqi patient (manual liver only)."""
    ts = shared_data / "ct" / "totalsegmentator_example"
    dicom = shared_data / "ct" / "totalsegmentator_dicom"
    dcmqi = shared_data / "ct" / "dcmqi_3slice"
    sm = {"image": str(ts / "example_ct_sm.nii.gz"), "label": str(ts / "example_seg.nii.gz"),
          "remap": "totalsegmentator"}
    cfg = {
        "model": dict(TINY_MODEL),
        "data": {"train": [dict(sm, name="sm_train", slices=[0.0, 0.8]),
                           {"name": "dicom", "image": str(dicom / "example_ct_dicom"),
                            "label": str(dicom / "example_seg_dicom.nii.gz"), "remap": "totalsegmentator"}],
                 "val": [dict(sm, name="sm_heldout", slices=[0.8, 1.0]),
                         {"name": "dcmqi_liver", "image": str(dcmqi / "ct-3slice"),
                          "label": str(dcmqi / "liver_spine_seg.nrrd"), "remap": "dcmqi",
                          "unlabeled": [1, 2, 3, 4, 6, 7, 8]}],
                 "batch_size": 4},
        "optim": {"lr": 0.05},
        "train": {"max_steps": steps, "checkpoint_every": 4, "val_every": steps, "threads": 1, "seed": 3},
        "output": str(tmp_path / name),
    }
    for key, value in sections.items():
        cfg[key] = dict(cfg.get(key, {}), **value) if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def read_log(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_train_then_distill_lower_the_loss_and_write_a_complete_run(tmp_path, shared_data):
    teacher_cfg = write_config(tmp_path, shared_data, "teacher", 12)
    assert kdseg_train(["train", str(teacher_cfg), "--set", "optim.momentum=0.8"]) == 0
    run = tmp_path / "teacher"
    rows = read_log(run / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    losses = [float(r["total"]) for r in rows]
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
    # poly schedule: lr_t = 0.05 * (1 - t / 12) ** 0.9 for the step that used it
    assert [float(r["lr"]) for r in rows[:3]] == pytest.approx([0.05 * (1 - t / 12) ** 0.9 for t in range(3)],
                                                                rel=1e-5)
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["optim"]["momentum"] == 0.8 and saved["optim"]["weight_decay"] == 1e-4  # override + default
    val = read_log(run / "val_log.csv")
    assert val[-1]["step"] == "12" and "dcmqi_liver/liver" in val[-1] and "sm_heldout/spleen" in val[-1]
    assert 0.0 <= float(val[-1]["mean_dice"]) <= 1.0
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 12 and summary["cpu_hours"] > 0 and summary["train_slices"] == 24 + 20
    assert sorted(p.name for p in (run / "figures").iterdir()) == [
        "losses.png", "overlay_dcmqi_liver.png", "overlay_sm_heldout.png", "validation_curve.png",
        "validation_dice.png"]
    assert any((run / "tensorboard").iterdir())
    assert (run / "final" / "model.safetensors").is_file()

    distill_cfg = write_config(tmp_path, shared_data, "student", 10, distill={
        "teacher": str(run), "pixel_kd": {"weight": 1.0, "temperature": 4.0}, "attention_kd": {"weight": 0.5}})
    assert kdseg_train(["distill", str(distill_cfg)]) == 0
    rows = read_log(tmp_path / "student" / "train_log.csv")
    assert list(rows[0])[:7] == ["step", "epoch", "lr", "total", "seg", "pixel_kd", "attention_kd"]
    for row in rows:
        assert float(row["pixel_kd"]) > 0 and float(row["attention_kd"]) > 0
        terms = float(row["seg"]) + float(row["pixel_kd"]) + float(row["attention_kd"])
        assert float(row["total"]) == pytest.approx(terms, rel=1e-4)
    totals = [float(r["total"]) for r in rows]
    assert np.mean(totals[-3:]) < 0.9 * np.mean(totals[:3])


def test_train_on_cataract1k_frames(tmp_path, shared_data):
    root = shared_data / "cataract1k"
    cfg = {"model": {"name": "student-shsa-tiny", "num_classes": 2, "img_size": 32, "in_channels": 3},
           "data": {"train": [{"format": "cataract1k", "root": str(root), "split": "train", "task": "instrument"}],
                    "val": [{"format": "cataract1k", "root": str(root), "split": "val", "task": "instrument"}],
                    "batch_size": 2},
           "optim": {"lr": 0.05},
           "train": {"max_steps": 6, "checkpoint_every": 3, "val_every": 3, "threads": 1},
           "output": str(tmp_path / "frames")}
    path = tmp_path / "frames.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert kdseg_train(["train", str(path)]) == 0
    val = read_log(tmp_path / "frames" / "val_log.csv")
    assert [r["step"] for r in val] == ["3", "6"]
    assert any(k.endswith("/class1") for k in val[0])  # every validation frame has instrument pixels
    losses = [float(r["total"]) for r in read_log(tmp_path / "frames" / "train_log.csv")]
    assert losses[-1] < losses[0]


def test_config_errors_name_the_key_and_exit_cleanly(tmp_path, shared_data, capsys):
    cfg = write_config(tmp_path, shared_data, "bad", 2)
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(cfg, ["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(cfg, ["optim.lr"])
    assert kdseg_train(["train", str(cfg), "--set", "optim.learning_rate=0.1"]) == 2
    assert "unknown config key 'optim.learning_rate'" in capsys.readouterr().err
    assert kdseg_train(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert kdseg_train(["train", str(cfg), "--set", "data.batch_size=1000"]) == 2
    assert "fewer than data.batch_size" in capsys.readouterr().err
    assert kdseg_train(["distill", str(cfg)]) == 2
    assert "distill.teacher is not set" in capsys.readouterr().err
    assert kdseg_train(["distill", str(cfg), "--set", f"distill.teacher={tmp_path / 'nowhere'}"]) == 2
    assert "teacher weights not found" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing half-written
