"""Axial-slice training dataset over in-memory CT volumes with TransUNet augmentation."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Flip, Rotate, Rotate90
from torch.utils.data import Dataset

from .ct_volumes import CTVolume

__all__ = ["AxialSliceDataset", "augment_slice", "resize_pair"]


def augment_slice(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                  max_degrees: float = 20.0) -> Tuple[np.ndarray, np.ndarray]:
    """TransUNet augmentation: p=0.5 random rot90 + flip, else p=0.5 rotation in ±max_degrees.

    Parameters are drawn from ``rng`` (so a seeded generator reproduces them) and applied
    with MONAI's deterministic transforms; the image is interpolated bilinearly, the
    label with nearest neighbour.

    Args:
        image: (H, W) float32; label: (H, W) integer.
    """
    img = image[None]
    lab = label[None].astype(np.float32)
    if rng.random() < 0.5:
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        img, lab = Rotate90(k)(img), Rotate90(k)(lab)
        img, lab = Flip(spatial_axis=axis)(img), Flip(spatial_axis=axis)(lab)
    elif rng.random() < 0.5:
        angle = float(np.deg2rad(rng.uniform(-max_degrees, max_degrees)))
        img = Rotate(angle, keep_size=True, mode="bilinear", padding_mode="zeros")(img)
        lab = Rotate(angle, keep_size=True, mode="nearest", padding_mode="zeros")(lab)
    img = np.asarray(img, dtype=np.float32)[0]
    lab = np.asarray(lab)[0].round().astype(np.int64)
    return img, lab


def resize_pair(image: np.ndarray, label: np.ndarray, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image (1, S, S) bilinear (edge-aligned, as the Lib's SimpleITK resampling) and label (S, S) nearest."""
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    lab = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None]
    img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)[0]
    lab = F.interpolate(lab, size=(size, size), mode="nearest")[0, 0].long()
    return img, lab


class AxialSliceDataset(Dataset):
    """Every axial slice of ``volumes``; item ``i`` is augmented with a generator seeded by
    (seed, epoch, i), so data order and augmentation replay exactly after a resume.

    Args:
        volumes: in-memory cases.
        img_size: output size S.
        augment: apply :func:`augment_slice`.
        seed: base seed.

    Returns per item:
        image (1, S, S) float32 in [0, 1], label (S, S) int64.
    """

    def __init__(self, volumes: Sequence[CTVolume], img_size: int = 224, augment: bool = True, seed: int = 1234):
        self.volumes = list(volumes)
        self.img_size = img_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.index: List[Tuple[int, int]] = [(v, z) for v, vol in enumerate(self.volumes)
                                             for z in range(vol.image.shape[0])]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        v, z = self.index[i]
        image, label = self.volumes[v].image[z], self.volumes[v].labels[z]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            image, label = augment_slice(image, label, rng)
        return resize_pair(image, label, self.img_size)
