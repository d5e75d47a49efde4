"""`kdseg-train export`: a release folder (registry.json + model.onnx) that the Lib and `kdseg` load and run on real CT.

The model here is trained for a few steps only: a plumbing test of the release format,
never offered to users.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

from kdseg_train.cli import main as kdseg_train


def _config(tmp_path, shared_data):
    ts = shared_data / "ct" / "totalsegmentator_example"
    sm = {"image": str(ts / "example_ct_sm.nii.gz"), "label": str(ts / "example_seg.nii.gz"),
          "remap": "totalsegmentator"}
    cfg = {
        "model": {"name": "student-shsa-tiny", "num_classes": 9, "img_size": 32},
        "data": {"train": [dict(sm, name="sm", slices=[0.0, 0.8])], "val": [dict(sm, name="held", slices=[0.8, 1.0])],
                 "batch_size": 4},
        "optim": {"lr": 0.05},
        "train": {"max_steps": 6, "checkpoint_every": 3, "val_every": 100, "threads": 1, "figures": False,
                  "tensorboard": False},
        "output": str(tmp_path / "run"),
        "export": {"model_id": "tiny-release-test", "title": "Tiny release test (plumbing only)",
                   "intended_use": "tests only"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_export_writes_a_release_the_lib_loads_and_segments_real_ct(tmp_path, shared_data, capsys):
    config = _config(tmp_path, shared_data)
    assert kdseg_train(["export", str(config)]) == 2
    assert "--checkpoint" in capsys.readouterr().err  # not trained yet: says how to proceed
    assert kdseg_train(["train", str(config)]) == 0
    assert kdseg_train(["evaluate", str(config)]) == 0
    assert kdseg_train(["export", str(config)]) == 0
    release = tmp_path / "run" / "release"
    assert sorted(p.name for p in release.iterdir()) == ["SHA256SUMS", "model.onnx", "registry.json", "tiny-release-test.md"]

    data = json.loads((release / "registry.json").read_text(encoding="utf-8"))
    card = data["models"][0]
    onnx = (release / "model.onnx").read_bytes()
    assert data["default_model_id"] == "tiny-release-test" and card["file"] == "model.onnx"
    assert card["sha256"] == hashlib.sha256(onnx).hexdigest() and card["size_bytes"] == len(onnx)
    assert card["input"] == {"channels": 1, "height": 32, "width": 32, "hu_window": [-125.0, 275.0],
                             "normalization": "window_to_unit", "slice_orientation": "LPS",
                             "input_name": "image", "output_name": "logits"}
    liver = card["labels"][5]
    assert liver["name"] == "liver" and liver["terminology"]["type"]["code"] == "10200004"  # SNOMED CT liver
    assert card["training"]["steps"] == 6 and card["training"]["recipe"]["optim"]["lr"] == 0.05
    assert card["training"]["compute"]["cpu_hours"] > 0
    assert [d["name"] for d in card["training"]["data"]["train"]] == ["sm"]
    summary = card["metrics"]["evaluation"]["summary"]
    assert set(summary) == {"transunet", "physical"} and "liver" in summary["transunet"]["organs"]
    mean_row = [line for line in (release / "tiny-release-test.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("| **mean** |")]
    assert len(mean_row) == 1 and f"**{summary['physical']['mean']['dice']['mean']:.3f}" in mean_row[0], mean_row

    from KDSegmentationLib.inference.pipeline import Segmenter, segment_image

    segmenter = Segmenter.from_registry(registry=release / "registry.json", device="cpu", allow_download=False)
    ct = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_ct.nii.gz"))
    result = segment_image(ct, segmenter)
    assert result.labels.GetSize() == ct.GetSize() and result.labels.GetDirection() == ct.GetDirection()
    assert result.model_id == "tiny-release-test"

    # the `kdseg` command line loads the release folder directly
    out = tmp_path / "seg.nii.gz"
    done = subprocess.run([sys.executable, "-m", "KDSegmentationLib.cli", "--registry", str(release / "registry.json"),
                           "segment", str(shared_data / "ct" / "totalsegmentator_dicom" / "example_ct_dicom"),
                           "-o", str(out), "--device", "cpu"],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert labels.shape == (20, 512, 512) and set(np.unique(labels)) <= set(range(9))

    # a second export into the same folder keeps the first entry and names its own file by id
    assert kdseg_train(["export", str(config), "--set", "export.model_id=tiny-second", "export.default=false"]) == 0
    data = json.loads((release / "registry.json").read_text(encoding="utf-8"))
    assert [m["id"] for m in data["models"]] == ["tiny-release-test", "tiny-second"]
    assert data["default_model_id"] == "tiny-release-test" and data["models"][1]["file"] == "tiny-second.onnx"


def test_bundled_model_card_is_the_rendering_of_its_registry_entry():
    """Resources/Models/<id>.md is generated from registry.json (tables, comparisons, latency, compute)."""
    from KDSegmentationLib.weights.model_registry import load_registry
    from kdseg_train.release_card import render_model_card

    models = Path(__file__).resolve().parents[2] / "Resources" / "Models"
    registry = load_registry(models / "registry.json")
    card = registry.get()
    text = render_model_card(card)
    assert (models / f"{card.id}.md").read_text(encoding="utf-8") == text
    comparisons = card.metrics.get("comparisons") or {}
    assert comparisons and "## Comparison" in text and "## Compute of the related runs" in text
    mean_row = next(line for line in text.splitlines() if line.startswith("| **mean** | **") and "organs)" in line)
    for summary in comparisons.values():
        assert f"**{summary['physical']['mean']['dice']['mean']:.3f}**" in mean_row
    assert "not stated" not in text.split("## Training data", 1)[1].split("##", 1)[0]  # data licences are given
