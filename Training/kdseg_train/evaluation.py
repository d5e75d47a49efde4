"""Evaluation of an exported model through the Lib's ONNX pipeline: per-case, per-organ Dice and HD95.

Two HD95 modes are reported side by side:
- ``transunet``: the TransUNet/medpy protocol, distances in voxel units and its empty-mask
  rules (prediction present, ground truth empty: Dice 1, HD95 0; both empty: 0, 0), for
  comparison with published Synapse tables;
- ``physical``: MONAI's spacing-aware HD95 in millimetres; cases where an organ is absent
  from the ground truth are left out of that organ's mean.
Voxels the dataset does not annotate (ignore label) are excluded from both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_hausdorff_distance

from KDSegmentationLib.anatomy import SYNAPSE_ORGANS
from KDSegmentationLib.image_io import read_image
from KDSegmentationLib.orientation import to_canonical
from KDSegmentationLib.pipeline import SegmentationOptions, Segmenter, segment_image

from .config import load_config
from .data.label_maps import IGNORE_INDEX, REMAP_TABLES, remap_labels

__all__ = ["hd95", "organ_metrics", "evaluate_release"]


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two non-empty masks (MONAI)."""
    import warnings

    p = torch.from_numpy(pred[None, None].astype(np.float32))
    g = torch.from_numpy(gt[None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI-internal deprecation notice
        value = compute_hausdorff_distance(p, g, percentile=95, spacing=list(spacing) if spacing else None)
    return float(value.item())


def organ_metrics(pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float]) -> Dict[str, Dict[str, float]]:
    """Dice, voxel HD95 (TransUNet rules) and physical HD95 (mm) per organ."""
    valid = gt != IGNORE_INDEX
    out: Dict[str, Dict[str, float]] = {}
    for organ in SYNAPSE_ORGANS:
        p = (pred == organ.index) & valid
        g = (gt == organ.index) & valid
        if not (gt == organ.index).any() and not np.isin(gt, [0, organ.index]).any():
            continue
        if p.any() and g.any():
            dice = float(2 * (p & g).sum() / (p.sum() + g.sum()))
            out[organ.name] = {"dice": dice, "hd95_voxels": hd95(p, g), "hd95_mm": hd95(p, g, spacing_zyx),
                               "gt_present": True}
        elif p.any():  # TransUNet: prediction but no ground truth counts as perfect
            out[organ.name] = {"dice": 1.0, "hd95_voxels": 0.0, "hd95_mm": float("nan"), "gt_present": False}
        elif g.any():
            out[organ.name] = {"dice": 0.0, "hd95_voxels": 0.0, "hd95_mm": float("nan"), "gt_present": True}
        else:
            out[organ.name] = {"dice": 0.0, "hd95_voxels": 0.0, "hd95_mm": float("nan"), "gt_present": False}
    return out


def _nanmean_std(values: List[float]) -> Dict[str, float]:
    arr = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def evaluate_release(registry: Path, config_path: Path, output: Path, model_id: Optional[str] = None) -> Path:
    """Segment every ``data.val`` case of ``config_path`` with the Lib and write JSON + Markdown reports.

    Only organs with ground truth in a case enter its means (the physical protocol); the
    TransUNet-rule values are kept per case for comparison with published tables.
    """
    config = load_config(config_path)
    segmenter = Segmenter.from_registry(model_id, device="cpu", registry=registry, allow_download=False)
    cases: Dict[str, Any] = {}
    for entry in config["data"]["val"]:
        image = read_image(entry["image"])
        label = sitk.Resample(sitk.ReadImage(entry["label"]), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        result = segment_image(image, segmenter, SegmentationOptions(postprocess=True))
        pred = sitk.GetArrayFromImage(to_canonical(result.labels))
        gt = remap_labels(sitk.GetArrayFromImage(to_canonical(label)), REMAP_TABLES[entry.get("remap", "identity")],
                          entry.get("unlabeled", ()))
        spacing = tuple(reversed(to_canonical(image).GetSpacing()))
        if "slices" in entry:
            z = pred.shape[0]
            a, b = int(round(entry["slices"][0] * z)), int(round(entry["slices"][1] * z))
            pred, gt = pred[a:b], gt[a:b]
        cases[entry.get("name", Path(entry["image"]).name)] = organ_metrics(pred, gt, spacing)
    summary: Dict[str, Any] = {}
    for organ in SYNAPSE_ORGANS:
        scored = [c[organ.name] for c in cases.values() if organ.name in c and c[organ.name]["gt_present"]]
        if scored:
            summary[organ.name] = {"dice": _nanmean_std([s["dice"] for s in scored]),
                                   "hd95_voxels": _nanmean_std([s["hd95_voxels"] for s in scored]),
                                   "hd95_mm": _nanmean_std([s["hd95_mm"] for s in scored])}
    report = {"model_id": segmenter.card.id, "protocol": "organs with ground truth in a case; HD95 in voxels "
              "(TransUNet) and mm (MONAI, spacing-aware)", "cases": cases, "summary": summary}
    output.mkdir(parents=True, exist_ok=True)
    (output / "evaluation.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    lines = [f"# Evaluation of {segmenter.card.id}", "", "| organ | Dice mean +/- std | HD95 (vox) | HD95 (mm) | cases |",
             "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['dice']['mean']:.3f} +/- {s['dice']['std']:.3f} | "
                     f"{s['hd95_voxels']['mean']:.1f} | {s['hd95_mm']['mean']:.1f} | {s['dice']['n']} |")
    lines += ["", "Means over cases where the organ is in the ground truth. HD95 (vox) follows the TransUNet "
              "protocol: a missed organ scores Dice 0 and HD95 0, so read HD95 together with Dice; HD95 (mm) is "
              "spacing-aware and undefined (nan) when the organ was missed."]
    md = output / "evaluation.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md
