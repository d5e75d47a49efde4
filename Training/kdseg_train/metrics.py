"""Per-organ segmentation metrics under the two protocols the evaluation reports.

``transunet`` reproduces the Synapse evaluation of TransUNet (``test.py`` / ``utils.py``,
which call medpy without voxel spacing):

- prediction and ground truth non-empty: Dice and HD95 in voxel units;
- prediction non-empty, ground truth empty: Dice 1, HD95 0;
- prediction empty: Dice 0, HD95 0 (whether or not the ground truth has the organ).

medpy's HD95 is the 95th percentile of the *pooled* surface distances of both
directions; :func:`hd95_medpy` computes exactly that with SciPy distance transforms.

``physical`` is the spacing-aware protocol: MONAI's Dice and MONAI's HD95 in millimetres
(the larger of the two directed 95th percentiles). A metric that is undefined (organ
absent from the ground truth, or missed by the prediction for HD95) is NaN and left out
of means, with counts reported alongside.

Voxels labelled :data:`IGNORE_INDEX` (not annotated) are excluded from both masks.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from .data.label_maps import IGNORE_INDEX

__all__ = ["dice", "hd95_medpy", "hd95_monai", "transunet_case_metrics", "physical_case_metrics",
           "validation_dice", "mean_std"]


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    # medpy: the object minus its erosion with the face-connected structuring element.
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)


def _directed_surface_distances(a: np.ndarray, b: np.ndarray, spacing: Optional[Sequence[float]]) -> np.ndarray:
    distance_to_b = ndimage.distance_transform_edt(~_surface(b), sampling=spacing)
    return distance_to_b[_surface(a)]


def hd95_medpy(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """medpy ``hd95``: 95th percentile of both directions' surface distances pooled together.

    Args:
        pred, gt: non-empty boolean masks of equal shape.
        spacing: voxel size per axis (None: voxel units, as TransUNet).
    """
    if not pred.any() or not gt.any():
        raise ValueError("hd95 needs two non-empty masks")
    distances = np.concatenate([_directed_surface_distances(pred, gt, spacing),
                                _directed_surface_distances(gt, pred, spacing)])
    return float(np.percentile(distances, 95))


def hd95_monai(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """MONAI ``compute_hausdorff_distance(percentile=95)``: max of the two directed 95th percentiles."""
    from monai.metrics import compute_hausdorff_distance

    p = torch.from_numpy(np.ascontiguousarray(pred)[None, None].astype(np.float32))
    g = torch.from_numpy(np.ascontiguousarray(gt)[None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks; callers handle them
        value = compute_hausdorff_distance(p, g, percentile=95,
                                           spacing=[float(s) for s in spacing] if spacing is not None else None)
    return float(value.item())


def _masks(pred: np.ndarray, gt: np.ndarray, index: int):
    valid = gt != IGNORE_INDEX
    return (pred == index) & valid, (gt == index)


def transunet_case_metrics(pred: np.ndarray, gt: np.ndarray, organs: Iterable[int]) -> Dict[int, Dict[str, float]]:
    """TransUNet-protocol Dice and voxel HD95 of each organ index in ``organs`` for one case."""
    out: Dict[int, Dict[str, float]] = {}
    for index in organs:
        p, g = _masks(pred, gt, index)
        if p.any() and g.any():
            out[index] = {"dice": dice(p, g), "hd95": hd95_medpy(p, g)}
        elif p.any():
            out[index] = {"dice": 1.0, "hd95": 0.0}
        else:
            out[index] = {"dice": 0.0, "hd95": 0.0}
    return out


def physical_case_metrics(pred: np.ndarray, gt: np.ndarray, organs: Iterable[int],
                          spacing: Sequence[float]) -> Dict[int, Dict[str, float]]:
    """Spacing-aware Dice and HD95 (mm, MONAI) of each organ; NaN where undefined.

    Also reports the predicted and reference volumes in mL so that a false-positive
    organ (absent from the ground truth, Dice NaN) is visible in the report.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: Dict[int, Dict[str, float]] = {}
    for index in organs:
        p, g = _masks(pred, gt, index)
        entry = {"dice": float("nan"), "hd95_mm": float("nan"), "pred_ml": float(p.sum()) * voxel_ml,
                 "gt_ml": float(g.sum()) * voxel_ml}
        if g.any():
            entry["dice"] = dice(p, g)
            if p.any():
                entry["hd95_mm"] = hd95_monai(p, g, spacing)
        out[index] = entry
    return out


def validation_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> Dict[int, float]:
    """Dice of each foreground class present in the ground truth (cheap, for periodic validation)."""
    valid = gt != IGNORE_INDEX
    scores: Dict[int, float] = {}
    for index in range(1, num_classes):
        g = gt == index
        if g.any():
            scores[index] = dice((pred == index) & valid, g)
    return scores


def mean_std(values: List[float]) -> Dict[str, float]:
    """Mean, (population) standard deviation and count of the finite values."""
    finite = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if finite.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}
