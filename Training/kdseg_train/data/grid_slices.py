"""Axial training slices put on the model's grid exactly as the Lib does at inference, then augmented.

Every slice is resampled once, when the dataset is built, with
``KDSegmentationLib.inference.model_grid.ModelGrid`` (physical-size or resize mode, whichever the
model card will declare) onto a canvas larger than the model input and centred on the
same point: its centre ``S x S`` crop is exactly what the Lib feeds the network, and the
margin lets zoom-out and translation bring real anatomy into view instead of padding.
:class:`~kdseg_train.data.tiny_data_augmentation.TinyDataAugmentation` then maps canvas
to model input per sample (and moves cached teacher logits with it).
"""

from __future__ import annotations

import hashlib
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from KDSegmentationLib.inference.model_grid import ModelGrid

from ..errors import UsageError
from .ct_volumes import CTVolume
from .label_maps import SYNAPSE_NUM_CLASSES
from .partial_targets import encode_partial_labels
from .tiny_data_augmentation import TinyDataAugmentation

__all__ = ["GridSliceDataset"]


class GridSliceDataset(Dataset):
    """Every axial slice of ``volumes`` on a ``canvas_size`` canvas of the model grid, augmented per sample.

    Args:
        volumes: in-memory cases (windowed image in [0, 1], labels in target order, spacing).
        grid: the model grid (size and mode) of the model card.
        transform: the per-sample augmentation (its ``img_size`` must equal the grid's).
        canvas_margin: extra pixels on each side of the canvas (0 for evaluation-style crops).
        num_classes: classes of the labels (for partially labelled volumes' targets).

    Items (after :meth:`set_epoch` with the augmentation key): ``(image (1, S, S) float32,
    label (S, S) int64; merged-background codes of :mod:`~kdseg_train.data.partial_targets` for
    partially labelled volumes)``, plus ``(teacher logits (K, S, S) float32, valid (S, S) bool)``
    once :meth:`attach_logits` has been called.
    """

    def __init__(self, volumes: Sequence[CTVolume], grid: ModelGrid, transform: TinyDataAugmentation,
                 canvas_margin: int = 32, num_classes: int = SYNAPSE_NUM_CLASSES) -> None:
        if grid.height != grid.width:
            raise UsageError(f"training uses square model grids, got {grid.height}x{grid.width}")
        if transform.img_size != grid.height:
            raise UsageError(f"augmentation output {transform.img_size} differs from the model grid {grid.height}")
        if canvas_margin < 0:
            raise UsageError(f"canvas_margin must be >= 0, got {canvas_margin}")
        self.grid, self.transform, self.margin = grid, transform, int(canvas_margin)
        size = grid.height + 2 * self.margin
        images: List[np.ndarray] = []
        labels: List[np.ndarray] = []
        self.index: List[Tuple[str, int]] = []
        self.num_classes = int(num_classes)
        self.labeled: List[Optional[Tuple[int, ...]]] = []  # per slice: the organs its case labels (None: all)
        for volume in volumes:
            spacing_yx = volume.spacing_zyx[1:]
            images.append(grid.to_model(volume.image, spacing_yx, (size, size)))
            # Outside the scanned field is air: background, not "unknown".
            labels.append(grid.labels_to_model(volume.labels, spacing_yx, (size, size), fill=0))
            self.index.extend((volume.name, z) for z in range(volume.num_slices))
            self.labeled.extend([volume.labeled] * volume.num_slices)
        if not self.index:
            raise UsageError("no volumes to take training slices from")
        self.canvases = np.concatenate(images).astype(np.float32)
        self.canvas_labels = np.concatenate(labels).astype(np.uint8)
        self.logits: Optional[np.ndarray] = None
        self.key = 0

    @property
    def img_size(self) -> int:
        return self.grid.height

    def set_epoch(self, key: int) -> None:
        """The augmentation key of the next item (the epoch, or the sample's position in the run)."""
        self.key = int(key)

    def __len__(self) -> int:
        return len(self.index)

    def model_inputs(self) -> np.ndarray:
        """(N, 1, S, S) un-augmented model inputs: the canvases' centre crops (what the Lib feeds the model)."""
        m, s = self.margin, self.grid.height
        return self.canvases[:, None, m:m + s, m:m + s]

    def model_labels(self) -> np.ndarray:
        """(N, S, S) labels of :meth:`model_inputs`."""
        m, s = self.margin, self.grid.height
        return self.canvas_labels[:, m:m + s, m:m + s]

    def organ_presence(self, num_classes: int) -> np.ndarray:
        """(N, num_classes - 1) bool: which organs (labels 1..K-1) each slice's model input shows."""
        labels = self.model_labels()
        return np.stack([(labels == k).any(axis=(1, 2)) for k in range(1, num_classes)], axis=1)

    def fingerprint(self) -> str:
        """SHA-256 of the model inputs and grid: what a teacher's cached logits depend on."""
        digest = hashlib.sha256()
        digest.update(repr((self.grid.height, self.grid.width, self.grid.pixel_spacing_mm)).encode())
        digest.update(np.ascontiguousarray(self.model_inputs()).tobytes())
        return digest.hexdigest()

    def attach_logits(self, logits: np.ndarray) -> None:
        """Teacher logits (N, K, S, S) of :meth:`model_inputs`, moved with every augmentation from now on."""
        s = self.grid.height
        if logits.ndim != 4 or logits.shape[0] != len(self) or logits.shape[-2:] != (s, s):
            raise UsageError(f"logits must be ({len(self)}, K, {s}, {s}), got {logits.shape}")
        self.logits = logits

    def __getitem__(self, i: int):
        self.transform.reseed(self.key, i)
        logits = None if self.logits is None else self.logits[i]
        sample = self.transform(self.canvases[i], self.canvas_labels[i], logits)
        label = sample.label
        if self.labeled[i] is not None:  # a partially labelled case: background becomes merged background
            label = torch.from_numpy(encode_partial_labels(np.asarray(label), self.labeled[i], self.num_classes))
        if self.logits is None:
            return sample.image, label
        return sample.image, label, sample.logits, sample.logits_valid

