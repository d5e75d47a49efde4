"""Every config shipped in Training/configs loads, and every runnable one trains 2 steps on real data.

Each data entry is pointed at small real data of its own kind (TransUNet's Synapse layout
written from the TotalSegmentator example, a datalist converted from a TotalSegmentator-
layout copy of it, the CT files of ../shared/data), the input shrunk to 32 px, the batch
to 2, the teacher to one transformer layer, and distillation configs get a tiny teacher run
on the same grid, so that no recipe can rot without this test failing.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from kdseg_train.config import load_config
from kdseg_train.data import CTVolume, load_ct_volume
from kdseg_train.data.layout_convert import convert_layout
from kdseg_train.data.synapse import write_synapse_case
from kdseg_train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "Training" / "configs").glob("*.yaml"))
TINY_TEACHER = {"depth": 1, "cnn_width": 32, "cnn_units": [1, 1, 1], "hidden_size": 64, "num_heads": 2,
                "head_channels": 64, "decoder_channels": [32, 16, 16, 8]}
TS_ORGANS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "stomach": 6,
             "pancreas": 7, "aorta": 52}


def _own_keys(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


@pytest.fixture(scope="module")
def small_data(shared_data, tmp_path_factory):
    """{"synapse": root, "datalist": path}: both layouts written from a crop of the TotalSegmentator example."""
    root = tmp_path_factory.mktemp("shipped_config_data")
    ts = shared_data / "ct" / "totalsegmentator_example"
    volume = load_ct_volume(ts / "example_ct_sm.nii.gz", ts / "example_seg.nii.gz", "totalsegmentator")
    write_synapse_case(CTVolume("case0005", volume.image[:12], volume.labels[:12], volume.spacing_zyx),
                       root / "Synapse", "train")
    write_synapse_case(CTVolume("case0001", volume.image[12:20], volume.labels[12:20], volume.spacing_zyx),
                       root / "Synapse", "test_vol")
    ct = sitk.ReadImage(str(ts / "example_ct.nii.gz"))[:, :, 70:90]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(ts / "example_seg_fast_force_split.nii.gz"))[:, :, 70:90])
    dataset = root / "Totalsegmentator_dataset"
    for case in ("s0001", "s0002"):
        (dataset / case / "segmentations").mkdir(parents=True)
        sitk.WriteImage(ct, str(dataset / case / "ct.nii.gz"))
        for name, ts_id in TS_ORGANS.items():
            mask = sitk.GetImageFromArray((seg == ts_id).astype(np.uint8))
            mask.CopyInformation(ct)
            sitk.WriteImage(mask, str(dataset / case / "segmentations" / f"{name}.nii.gz"))
    (dataset / "meta.csv").write_text("image_id;split\ns0001;train\ns0002;val\n", encoding="utf-8")
    datalist = convert_layout("totalsegmentator", dataset, root / "converted")
    return {"synapse": root / "Synapse", "datalist": datalist, "ts": ts}


def _entry(entry: dict, data: dict) -> dict:
    entry = dict(entry)
    if entry.get("format") == "synapse":
        entry["root"] = str(data["synapse"])
    elif "datalist" in entry:
        entry["datalist"] = str(data["datalist"])
    else:
        for key in ("image", "label"):
            path = Path(entry[key])
            assert not path.is_absolute() and (REPO / path).exists(), f"{entry[key]} is not in ../shared/data"
        if entry.get("remap") == "totalsegmentator":  # the first 30 slices of the example patient: fast to read
            entry.update(image=str(data["ts"] / "example_ct_sm.nii.gz"), label=str(data["ts"] / "example_seg.nii.gz"))
    return entry


def _shrunk(config: dict, data: dict, output: Path, teachers: dict) -> dict:
    cfg = copy.deepcopy(config)
    cfg["model"].update(img_size=32, pretrained=None)
    if cfg["model"]["name"] == "teacher-r50-b16":  # the same network family, a fraction of its width and depth
        cfg["model"]["overrides"] = dict(cfg["model"].get("overrides") or {}, **TINY_TEACHER)
    for split in ("train", "val"):
        cfg["data"][split] = [_entry(e, data) for e in cfg["data"].get(split) or []]
    cfg["data"].update(batch_size=2, num_workers=0)
    cfg["train"].update(max_steps=2, checkpoint_every=2, val_every=1000, threads=1, figures=False, tensorboard=False,
                        device="cpu", amp=False)
    cfg["output"] = str(output)
    if cfg["distill"].get("teacher"):
        cfg["distill"]["teacher"] = str(teachers[cfg["model"].get("pixel_spacing_mm")])
    return cfg


def test_every_shipped_config_loads():
    assert len(CONFIGS) >= 10
    for path in CONFIGS:
        config = load_config(path)
        assert config["model"]["num_classes"] == 9, path.name


def test_every_runnable_config_trains_two_steps(small_data, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the configs' relative paths are taken from the repository root
    runnable = [p for p in CONFIGS if "output" in _own_keys(p)]
    assert {"synapse_teacher.yaml", "synapse_student_kd.yaml", "synapse_student_nokd.yaml",
            "synapse_teacher_torchrun.yaml", "abdomen_teacher.yaml", "abdomen_student_kd.yaml"} <= \
        {p.name for p in runnable}
    configs = {p.name: load_config(p) for p in runnable}
    order = sorted(configs, key=lambda name: bool(configs[name]["distill"].get("teacher")))  # teachers first
    teachers = {}
    for name in order:
        config = configs[name]
        distill = bool(config["distill"].get("teacher"))
        cfg = _shrunk(config, small_data, tmp_path / name, teachers)
        trainer = Trainer(cfg, distill=distill)
        final = trainer.run()
        assert (final / "model.safetensors").is_file(), name
        rows = (tmp_path / name / "train_log.csv").read_text(encoding="utf-8").splitlines()
        assert len(rows) == 3 and all(np.isfinite(float(v)) for v in rows[-1].split(",")[3:-1]), name
        if config["model"]["name"] == "teacher-r50-b16":
            teachers.setdefault(config["model"].get("pixel_spacing_mm"), tmp_path / name)
