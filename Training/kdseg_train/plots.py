"""PNG figures of a run: loss curves, validation Dice over steps and per organ, prediction overlays."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from KDSegmentationLib.anatomy import SYNAPSE_ORGANS
from KDSegmentationLib.atomic_files import atomic_file

__all__ = ["plot_losses", "plot_validation_curve", "plot_validation_dice", "save_overlay"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, output: Path) -> None:
    # The temporary keeps the extension: matplotlib picks the image format from it.
    with atomic_file(output, keep_suffix=True) as tmp:
        fig.savefig(tmp, dpi=120)


def _read(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def plot_losses(train_log: Path, output: Path) -> Path:
    """Every loss term against step (raw and a moving average), log scale."""
    plt = _pyplot()
    rows = _read(train_log)
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        steps = np.array([int(r["step"]) for r in rows])
        window = max(1, min(25, len(rows) // 10))
        for term in [k for k in rows[0] if k not in ("step", "epoch", "lr", "seconds")]:
            values = np.array([float(r[term]) for r in rows])
            if not np.any(values > 0):
                continue
            line = ax.plot(steps, values, alpha=0.25, linewidth=0.8)[0]
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color=line.get_color(), label=term)
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, output)
    plt.close(fig)
    return output


def plot_validation_curve(val_log: Path, output: Path) -> Path:
    """Mean and per-(case, organ) validation Dice against step."""
    plt = _pyplot()
    rows = _read(val_log)
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        steps = [int(r["step"]) for r in rows]
        for key in [k for k in rows[0] if k not in ("step", "mean_dice")]:
            ax.plot(steps, [float(r[key]) for r in rows], linewidth=0.8, alpha=0.6, label=key)
        ax.plot(steps, [float(r["mean_dice"]) for r in rows], color="black", linewidth=2.0, label="mean")
        ax.legend(fontsize=6, ncol=2)
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("validation Dice")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, output)
    plt.close(fig)
    return output


def plot_validation_dice(validation: Dict[str, Any], output: Path, title: str = "Validation Dice") -> Path:
    """Bar chart of per-case, per-organ Dice: ``{"mean_dice": m, "cases": {case: {organ: dice}}}``."""
    plt = _pyplot()
    items: List[Tuple[str, float]] = [(f"{case[:18]}\n{organ}", float(value))
                                      for case, scores in validation["cases"].items()
                                      for organ, value in scores.items()]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(items)), 4))
    ax.bar(range(len(items)), [v for _, v in items], color="tab:blue")
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([k for k, _ in items], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title(f"{title} (mean {validation.get('mean_dice', float('nan')):.3f})")
    fig.tight_layout()
    _save(fig, output)
    plt.close(fig)
    return output


def save_overlay(image: np.ndarray, labels: np.ndarray, output: Path, reference: Optional[np.ndarray] = None,
                 title: str = "") -> Path:
    """One slice (values in [0, 1]; (H, W) grey or (3, H, W) RGB) with label colours; reference beside it."""
    plt = _pyplot()
    colours = np.zeros((256, 4))
    palette = plt.get_cmap("tab10")
    for index in range(1, 255):
        colours[index] = (*palette(index % 10)[:3], 0.55)
    for organ in SYNAPSE_ORGANS:
        colours[organ.index] = (*[c / 255 for c in organ.color], 0.55)
    shown = np.transpose(image, (1, 2, 0)) if image.ndim == 3 else image
    panels: List[Sequence[Any]] = [("prediction", labels)]
    if reference is not None:
        panels.append(("reference", reference))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (name, lab) in zip(axes[0], panels):
        ax.imshow(np.clip(shown, 0, 1), cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
        ax.imshow(colours[np.where(lab == 255, 0, lab).astype(int)])
        if name == "reference" and (lab == 255).any():
            ax.contour(lab == 255, levels=[0.5], colors="yellow", linewidths=0.5)
        ax.set_title(f"{title} {name}".strip(), fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    _save(fig, output)
    plt.close(fig)
    return output
