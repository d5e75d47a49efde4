"""PNG reports of a run: loss curves, per-organ validation Dice, prediction overlays."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from KDSegmentationLib.anatomy import SYNAPSE_ORGANS

__all__ = ["plot_losses", "plot_validation_dice", "save_overlay"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(train_log: Path, output: Path) -> Path:
    """Total and per-term training loss against step (moving average over 10 steps)."""
    plt = _pyplot()
    with open(train_log, newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = np.array([int(r["step"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    for term in [k for k in rows[0] if k not in ("step", "lr", "seconds")]:
        values = np.array([float(r[term]) for r in rows])
        if not values.any():
            continue
        smooth = np.convolve(values, np.ones(10) / 10, mode="valid") if len(values) >= 10 else values
        ax.plot(steps[len(steps) - len(smooth):], smooth, label=term)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (10-step mean)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def plot_validation_dice(metrics: Dict[str, float], output: Path, title: str = "Validation Dice") -> Path:
    """Bar chart of the ``<case>/dice_<k>`` entries of a validation result."""
    plt = _pyplot()
    names = {organ.index: organ.name for organ in SYNAPSE_ORGANS}
    keys = [k for k in metrics if "/dice_" in k]
    labels = [f"{k.split('/')[0][:18]}\n{names[int(k.rsplit('_', 1)[1])]}" for k in keys]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(keys)), 4))
    ax.bar(range(len(keys)), [metrics[k] for k in keys], color="tab:blue")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title(f"{title} (mean {metrics.get('mean_dice', float('nan')):.3f})")
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def save_overlay(image: np.ndarray, labels: np.ndarray, output: Path, reference: np.ndarray = None,
                 title: str = "") -> Path:
    """One axial slice (values in [0, 1]) with organ colours overlaid; ground truth beside it if given."""
    plt = _pyplot()
    colours = np.zeros((256, 4))
    for organ in SYNAPSE_ORGANS:
        colours[organ.index] = (*[c / 255 for c in organ.color], 0.55)
    panels: List[Sequence] = [("prediction", labels)] + ([("reference", reference)] if reference is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (name, lab) in zip(axes[0], panels):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        shown = np.where(lab == 255, 0, lab).astype(int)
        ax.imshow(colours[shown])
        ax.set_title(f"{title} {name}".strip())
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
