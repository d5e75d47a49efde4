"""Cataract-1K surgical video frames (Ghamsarian et al., Scientific Data 2024).

Layout: ``<root>/<split>/images/<name>.png`` (RGB 1024x768) and
``<root>/<split>/labels/<name>.png`` masks, stored either single-channel or as RGB with
three equal channels. Tasks:
- ``instrument``: 0 background, 1 any instrument (binary masks);
- ``anatomy_instrument``: the dataset's own 5-class map, 0 background, 1 iris,
  2 pupil, 3 intraocular lens, 4 any instrument.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["CATARACT_TASKS", "Cataract1KDataset", "read_cataract_mask"]

CATARACT_TASKS = {"instrument": 2, "anatomy_instrument": 5}


def read_cataract_mask(path: Path) -> np.ndarray:
    """A mask as (H, W) uint8, accepting RGB-stored masks only when their channels agree."""
    from PIL import Image

    mask = np.array(Image.open(path))
    if mask.ndim == 3:
        if not (np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 0], mask[..., 2])):
            raise ValueError(f"{path}: an RGB mask must have three equal channels (it encodes class ids)")
        mask = mask[..., 0]
    return mask.astype(np.uint8)


class Cataract1KDataset(Dataset):
    """Frames resized to ``img_size`` (image bilinear, mask nearest), with optional flips.

    Returns per item:
        image (3, S, S) float32 in [0, 1], label (S, S) int64.
    """

    def __init__(self, root: Path, split: str = "train", task: str = "instrument", img_size: int = 224,
                 augment: bool = False, seed: int = 1234) -> None:
        if task not in CATARACT_TASKS:
            raise ValueError(f"unknown task {task!r}; choose from {', '.join(CATARACT_TASKS)}")
        self.root, self.split, self.task = Path(root), split, task
        self.num_classes = CATARACT_TASKS[task]
        self.img_size, self.augment, self.seed, self.epoch = img_size, augment, seed, 0
        images = sorted((self.root / split / "images").glob("*.png"))
        if not images:
            raise FileNotFoundError(f"no frames in {self.root / split / 'images'}")
        self.pairs: List[Tuple[Path, Path]] = []
        for image in images:
            label = self.root / split / "labels" / image.name
            if not label.is_file():
                raise FileNotFoundError(f"frame {image.name} has no mask {label}")
            self.pairs.append((image, label))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        from PIL import Image

        image_path, label_path = self.pairs[index]
        image = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255.0
        label = read_cataract_mask(label_path)
        if label.max() >= self.num_classes:
            raise ValueError(f"{label_path}: class {label.max()} does not exist in task {self.task!r}")
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if rng.random() < 0.5:
                image, label = image[:, ::-1], label[:, ::-1]
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        lab = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None]
        size = (self.img_size, self.img_size)
        img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)[0]
        lab = F.interpolate(lab, size=size, mode="nearest")[0, 0].long()
        return img, lab
