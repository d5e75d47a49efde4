"""Evaluation metrics against direct implementations, and `kdseg-train evaluate` on real CT through the Lib."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy.spatial.distance import cdist

from kdseg_train.cli import main as kdseg_train
from kdseg_train.metrics import hd95_medpy, hd95_monai, physical_case_metrics, transunet_case_metrics


def _surface_points(mask, spacing):
    """Surface voxels the way medpy defines them (mask minus its face-connected erosion), brute force."""
    padded = np.pad(mask, 1)
    interior = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (-1, 1):
            interior &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~interior) * np.asarray(spacing, dtype=float)


def _fixture_masks():
    rng = np.random.default_rng(0)
    a = np.zeros((10, 18, 18), bool)
    b = np.zeros((10, 18, 18), bool)
    a[2:8, 3:13, 4:14] = True
    b[3:9, 5:14, 3:11] = True
    b[rng.random(b.shape) > 0.995] = True  # scattered false positives make the tails matter
    a[0, 0, 0] = True  # an object touching the array border
    return a, b


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 1.0, 0.5)])
def test_hd95_definitions_match_brute_force_point_distances(spacing):
    a, b = _fixture_masks()
    pa, pb = _surface_points(a, spacing), _surface_points(b, spacing)
    d_ab, d_ba = cdist(pa, pb).min(axis=1), cdist(pb, pa).min(axis=1)
    # medpy (TransUNet): 95th percentile of both directions pooled
    medpy = np.percentile(np.concatenate([d_ab, d_ba]), 95)
    assert hd95_medpy(a, b, spacing) == pytest.approx(medpy, rel=1e-9)
    # MONAI (physical protocol): the larger of the two directed 95th percentiles
    monai = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assert hd95_monai(a, b, spacing) == pytest.approx(monai, rel=1e-4)
    if spacing != (1.0, 1.0, 1.0):
        assert hd95_medpy(a, b, spacing) != pytest.approx(monai, rel=1e-3)  # the two conventions differ here


def test_transunet_empty_mask_rules_and_ignored_voxels():
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[1:3, 1:4, 1:4] = 7  # spleen
    gt[0] = 255  # not annotated
    pred = np.zeros_like(gt)
    pred[1:3, 2:5, 2:5] = 5  # liver where the reference has none
    pred[0] = 7  # spleen predicted only in ignored voxels: does not count
    m = transunet_case_metrics(pred, gt, organs=[5, 7, 1])
    assert m[5] == {"dice": 1.0, "hd95": 0.0}  # prediction present, reference empty
    assert m[7] == {"dice": 0.0, "hd95": 0.0}  # reference present, prediction empty
    assert m[1] == {"dice": 0.0, "hd95": 0.0}  # both empty
    p = physical_case_metrics(pred, gt, [5, 7], (2.0, 1.0, 1.0))
    assert math.isnan(p[5]["dice"]) and p[5]["pred_ml"] == pytest.approx(18 * 2 / 1000)  # undefined, but visible
    assert p[7]["dice"] == 0.0 and math.isnan(p[7]["hd95_mm"])


def _config(tmp_path, shared_data):
    ts = shared_data / "ct" / "totalsegmentator_example"
    dcmqi = shared_data / "ct" / "dcmqi_3slice"
    cfg = {
        "model": {"name": "student-shsa-tiny", "num_classes": 9, "img_size": 32},
        "data": {"train": [{"name": "sm", "image": str(ts / "example_ct_sm.nii.gz"),
                            "label": str(ts / "example_seg.nii.gz"), "remap": "totalsegmentator",
                            "slices": [0.0, 0.8]}],
                 "val": [{"name": "sm_heldout", "image": str(ts / "example_ct_sm.nii.gz"),
                          "label": str(ts / "example_seg.nii.gz"), "remap": "totalsegmentator",
                          "slices": [0.8, 1.0]},
                         {"name": "dcmqi_liver", "image": str(dcmqi / "ct-3slice"),
                          "label": str(dcmqi / "liver_spine_seg.nrrd"), "remap": "dcmqi",
                          "unlabeled": [1, 2, 3, 4, 6, 7, 8]}],
                 "batch_size": 4},
        "optim": {"lr": 0.05},
        "train": {"max_steps": 8, "checkpoint_every": 4, "val_every": 100, "threads": 1, "figures": False,
                  "tensorboard": False},
        "output": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_evaluate_through_the_lib_pipeline_and_pytorch_agree_on_real_ct(tmp_path, shared_data, capsys):
    config = _config(tmp_path, shared_data)
    assert kdseg_train(["evaluate", str(config)]) == 2  # nothing trained yet
    assert "does not exist; train first" in capsys.readouterr().err
    assert kdseg_train(["train", str(config)]) == 0
    assert kdseg_train(["evaluate", str(config)]) == 0
    report = json.loads((tmp_path / "run" / "evaluation" / "evaluation.json").read_text(encoding="utf-8"))
    assert report["model"]["backend"] == "onnx" and set(report["cases"]) == {"sm_heldout", "dcmqi_liver"}
    assert list(report["cases"]["dcmqi_liver"]["organs"]) == ["liver"]  # manual liver only: nothing else scored
    assert len(report["cases"]["sm_heldout"]["organs"]) == 8
    assert report["cases"]["sm_heldout"]["spacing_zyx"] == [3.0, 3.0, 3.0]
    assert report["cases"]["dcmqi_liver"]["spacing_zyx"][0] == pytest.approx(1.0, abs=0.01)
    liver = report["summary"]["transunet"]["organs"]["liver"]["dice"]
    assert liver["n"] == 2 and 0.0 <= liver["mean"] <= 1.0 and liver["std"] >= 0.0
    md = (tmp_path / "run" / "evaluation" / "evaluation.md").read_text(encoding="utf-8")
    assert "## TransUNet protocol" in md and "## Physical protocol" in md and "| liver |" in md

    # The same weights in PyTorch give the same labels up to interpolation differences at organ borders.
    assert kdseg_train(["evaluate", str(config), "--backend", "pytorch", "-o", str(tmp_path / "pt")]) == 0
    pt = json.loads((tmp_path / "pt" / "evaluation.json").read_text(encoding="utf-8"))
    for case in report["cases"]:
        for organ, values in report["cases"][case]["organs"].items():
            a, b = values["physical"]["pred_ml"], pt["cases"][case]["organs"][organ]["physical"]["pred_ml"]
            assert abs(a - b) <= 0.1 * max(a, b) + 1.0, (case, organ, a, b)
