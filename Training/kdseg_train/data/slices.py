"""Axial-slice training dataset over in-memory CT volumes, with per-sample seeded augmentation."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from ..errors import UsageError
from .augmentation import TransUNetAugmentation, augment_slice, resize_pair
from .ct_volumes import CTVolume
from .label_maps import SYNAPSE_NUM_CLASSES
from .partial_targets import encode_partial_labels

__all__ = ["AxialSliceDataset", "augment_slice", "resize_pair"]


class AxialSliceDataset(Dataset):
    """Every axial slice of ``volumes`` (optionally minus a held-out z band per volume).

    Item ``i`` of epoch ``e`` is augmented with the transform reseeded from
    (seed, e, i), so data order and augmentation replay exactly after a resume and do
    not depend on the number of DataLoader workers.

    Args:
        volumes: in-memory cases (windowed image, labels in target order).
        img_size: output size S (ignored when ``transform`` is given).
        augment: TransUNet augmentation (ignored when ``transform`` is given).
        seed: base seed (ignored when ``transform`` is given).
        transform: a :class:`TransUNetAugmentation` (or any callable ``(image, label) ->
            (image, label)``; it is reseeded when it has ``reseed``).
        holdout: z fractions [a, b) of every volume left out (for a validation band
            taken with ``CTVolume.slice_range(a, b)``).
        num_classes: classes of the labels (for partially labelled volumes' targets).

    Returns per item:
        image (1, S, S) float32 in [0, 1], label (S, S) int64 (merged-background codes of
        :mod:`~kdseg_train.data.partial_targets` for partially labelled volumes).
    """

    def __init__(self, volumes: Sequence[CTVolume], img_size: int = 224, augment: bool = True, seed: int = 1234,
                 transform: Optional[TransUNetAugmentation] = None,
                 holdout: Optional[Tuple[float, float]] = None, num_classes: int = SYNAPSE_NUM_CLASSES) -> None:
        self.volumes = list(volumes)
        self.num_classes = int(num_classes)
        if not self.volumes:
            raise UsageError("no volumes to take training slices from")
        self.transform = transform if transform is not None else TransUNetAugmentation(img_size, augment, seed=seed)
        self.epoch = 0
        self.index: List[Tuple[int, int]] = []
        for v, vol in enumerate(self.volumes):
            skip = range(0)
            if holdout is not None:
                a, b = vol.slice_bounds(*holdout)
                skip = range(a, b)
            self.index.extend((v, z) for z in range(vol.num_slices) if z not in skip)
        if not self.index:
            raise UsageError(f"the holdout {holdout} leaves no training slices")

    @property
    def img_size(self) -> Optional[int]:
        return getattr(self.transform, "img_size", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        v, z = self.index[i]
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(self.epoch, i)
        volume = self.volumes[v]
        image, label = self.transform(volume.image[z], volume.labels[z])
        if volume.labeled is not None:  # a partially labelled case: background becomes merged background
            label = torch.from_numpy(encode_partial_labels(label.numpy(), volume.labeled, self.num_classes))
        return image, label
