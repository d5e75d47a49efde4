"""Training targets of partially labelled cases: which classes a voxel may still be.

A case that labels only some organs (a liver-only dataset) knows two things about a
voxel it leaves at 0: it is not any organ the case labels, and it may be background or
any organ the case does not label. The target keeps exactly that, in the label map
itself, so it travels unchanged through augmentation (nearest-neighbour), batching and
the DDP gather:

- ``0 .. C-1``: the voxel is that class (fully known);
- ``IGNORE_INDEX`` (255): nothing is known;
- ``MERGED_BASE + bits``: background or one of the unlabelled organs ``u`` whose bit
  ``1 << u`` is set in ``bits`` (a "merged background" voxel, Shi et al. 2021).

:func:`allowed_classes` decodes a batch into the (B, C, ...) mask of classes each voxel
may be; the partial-label losses read only that.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import UsageError
from .label_maps import IGNORE_INDEX

__all__ = ["MERGED_BASE", "MAX_CLASSES", "encode_partial_labels", "allowed_classes", "hard_labels",
           "unlabeled_organs"]

MERGED_BASE = 1 << 16
"""First target value of a merged-background voxel (above any class id and IGNORE_INDEX)."""

MAX_CLASSES = 16
"""Classes representable in the bit mask (MERGED_BASE + bits stays below 2 * MERGED_BASE)."""


def unlabeled_organs(labeled: Iterable[int], num_classes: int) -> tuple:
    """Organs 1..C-1 not in ``labeled``.

    Raises:
        ValueError: a labelled id is not an organ of 1..C-1.
    """
    labeled = tuple(int(i) for i in labeled)
    bad = [i for i in labeled if not 1 <= i < num_classes]
    if bad:
        raise UsageError(f"labelled organs {bad} are not classes 1..{num_classes - 1}")
    return tuple(i for i in range(1, num_classes) if i not in labeled)


def encode_partial_labels(labels: np.ndarray, labeled: Sequence[int], num_classes: int) -> np.ndarray:
    """Targets of a case that labels only ``labeled``: its background becomes merged background.

    Args:
        labels: integer label map in target order (0 background, ``IGNORE_INDEX`` unknown).
        labeled: organ ids the case annotates.
        num_classes: C (at most :data:`MAX_CLASSES`).

    Returns:
        int64 array of the same shape; unchanged when every organ is labelled.

    Raises:
        ValueError: too many classes, or a voxel labelled with an organ the case says it does not label.
    """
    if num_classes > MAX_CLASSES:
        raise UsageError(f"partial labels support up to {MAX_CLASSES} classes, got {num_classes}")
    missing = unlabeled_organs(labeled, num_classes)
    out = np.asarray(labels).astype(np.int64)
    if not missing:
        return out
    stray = [u for u in missing if (out == u).any()]
    if stray:
        raise UsageError(f"the label map has voxels of organ(s) {stray}, which the case declares unlabelled; "
                         "add them to its labeled: list")
    out[out == 0] = MERGED_BASE + sum(1 << u for u in missing)
    return out


def allowed_classes(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, ...) targets -> (B, C, ...) bool: the classes each voxel may be (all False where ignored)."""
    target = target.long()
    classes = torch.arange(num_classes, device=target.device).view(1, -1, *([1] * (target.ndim - 1)))
    t = target.unsqueeze(1)
    merged = t >= MERGED_BASE
    bits = torch.where(merged, t - MERGED_BASE, torch.zeros_like(t))
    in_merged = ((bits >> classes) & 1).bool() | (classes == 0)
    known = (t == classes) & ~merged
    return torch.where(merged, in_merged, known)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Targets with merged-background voxels as ``IGNORE_INDEX``: for terms that need one class per voxel."""
    return torch.where(target >= MERGED_BASE, torch.full_like(target, IGNORE_INDEX), target)
