"""Cataract-1K surgical video frames (Ghamsarian et al., Scientific Data 2024).

Two layouts are read:

- frames and masks as PNG: ``<root>/<split>/images/<name>.png`` (RGB, 1024x768) and
  ``<root>/<split>/labels/<name>.png`` (single-channel, or RGB with three equal channels);
- the dataset as published (Supervisely annotations):
  ``<root>/<case>/img/<name>.png`` and ``<root>/<case>/ann/<name>.png.json``; the
  polygons are rasterised in the order of the dataset's own mask script (iris, called
  "Cornea" in the JSON, then pupil, lens, instruments on top).

Tasks:

- ``instrument``: 0 background, 1 any instrument;
- ``anatomy_instrument``: the dataset's 5-class map, 0 background, 1 iris, 2 pupil,
  3 intraocular lens, 4 any instrument.

PNG mask encodings (``mask_encoding``): ``binary`` (0 background, any non-zero value an
instrument; the default of the instrument task) or ``multiclass`` (ids written by the
dataset's mask script: 1 iris, 2 pupil, 3 lens, 4 + i for instrument type i; the
default of the anatomy task). A binary task on a multi-class mask is refused rather
than guessed, since value 1 means "iris" there and "instrument" in a binary mask.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UsageError
from .augmentation import TransUNetAugmentation

__all__ = ["CATARACT_TASKS", "CATARACT_INSTRUMENTS", "Cataract1KDataset", "read_cataract_mask",
           "rasterise_supervisely", "task_labels"]

_log = logging.getLogger("kdseg_train")

CATARACT_TASKS: Dict[str, int] = {"instrument": 2, "anatomy_instrument": 5}
"""Task name -> number of classes including background."""

CATARACT_INSTRUMENTS: Tuple[str, ...] = (
    "Slit Knife", "Gauge", "Capsulorhexis Cystotome", "Spatula", "Phacoemulsification Tip",
    "Irrigation-Aspiration", "Lens Injector", "Incision Knife", "Katena Forceps", "Capsulorhexis Forceps")
"""Instrument class titles of the Supervisely annotations (multi-class id = 4 + position)."""

_ANATOMY_IDS = {"Cornea": 1, "Iris": 1, "Pupil": 2, "Lens": 3}
_ENCODINGS = ("binary", "multiclass")


def read_cataract_mask(path: Path) -> np.ndarray:
    """A PNG mask as (H, W) uint8, accepting RGB-stored masks only when their channels agree."""
    from PIL import Image

    try:
        with Image.open(path) as handle:
            mask = np.array(handle)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read mask {path}: {exc}") from None
    if mask.ndim == 3:
        if mask.shape[2] == 4:
            mask = mask[..., :3]
        if not (np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 0], mask[..., 2])):
            raise UsageError(f"{path}: an RGB mask must have three equal channels (they encode class ids); "
                             "colour-coded masks are not supported")
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise UsageError(f"{path}: mask must be a 2D image, got shape {mask.shape}")
    return mask.astype(np.uint8)


def rasterise_supervisely(annotation: Path) -> np.ndarray:
    """Multi-class mask (ids as :data:`CATARACT_INSTRUMENTS` doc) from a Supervisely JSON annotation."""
    from PIL import Image, ImageDraw

    try:
        data = json.loads(Path(annotation).read_text(encoding="utf-8"))
        height, width = int(data["size"]["height"]), int(data["size"]["width"])
        objects = data["objects"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read Supervisely annotation {annotation}: {exc}") from None
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)

    def class_id(title: str) -> Optional[int]:
        if title in _ANATOMY_IDS:
            return _ANATOMY_IDS[title]
        if title in CATARACT_INSTRUMENTS:
            return 4 + CATARACT_INSTRUMENTS.index(title)
        return None

    unknown = sorted({o.get("classTitle", "?") for o in objects if class_id(o.get("classTitle", "")) is None})
    if unknown:
        _log.warning("%s: ignoring unknown classes %s", annotation, ", ".join(unknown))
    # Anatomy first (iris, pupil, lens: each drawn over the previous), instruments on top.
    for rank in (1, 2, 3, 4):
        for obj in objects:
            cid = class_id(obj.get("classTitle", ""))
            if cid is None or min(cid, 4) != rank:
                continue
            points = [tuple(float(c) for c in p) for p in obj.get("points", {}).get("exterior", [])]
            if len(points) >= 3:
                draw.polygon(points, fill=cid)
    return np.array(canvas, dtype=np.uint8)


def task_labels(mask: np.ndarray, task: str, encoding: str, source: str = "mask") -> np.ndarray:
    """Class ids of ``task`` from a stored mask of ``encoding``."""
    if encoding == "binary":
        if task != "instrument":
            raise UsageError(f"{source}: binary masks only hold instruments; task {task!r} needs multi-class masks "
                             "(mask_encoding: multiclass) or the Supervisely annotations")
        values = np.unique(mask)
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            raise UsageError(f"{source}: a binary mask must hold 0 and one other value, found {values.tolist()}; "
                             "for masks from the dataset's multi-class script set mask_encoding: multiclass")
        return (mask > 0).astype(np.int64)
    if encoding != "multiclass":
        raise UsageError(f"mask_encoding must be one of {', '.join(_ENCODINGS)}, got {encoding!r}")
    if mask.max() >= 4 + len(CATARACT_INSTRUMENTS):
        raise UsageError(f"{source}: value {int(mask.max())} is no class of the Cataract-1K multi-class masks "
                         f"(0..{3 + len(CATARACT_INSTRUMENTS)})")
    if task == "instrument":
        return (mask >= 4).astype(np.int64)
    return np.minimum(mask, 4).astype(np.int64)


class Cataract1KDataset(Dataset):
    """Frames with instrument or anatomy+instrument labels.

    Args:
        root: dataset root (either layout, see the module docstring).
        split: sub-folder of the PNG layout (``train``, ``val``, ``test``); ignored when
            ``cases`` is given.
        task: ``instrument`` or ``anatomy_instrument``.
        transform: callable ``(image (3, H, W), label (H, W)) -> (image, label)``;
            reseeded per (epoch, index) when it has ``reseed``. Default: resize to
            ``img_size`` with TransUNet augmentation when ``augment``.
        img_size, augment, seed: the default transform's settings.
        mask_encoding: ``binary`` / ``multiclass`` / None (the task's default).
        cases: case folders of the Supervisely layout to use (e.g. one fold).

    Returns per item:
        image (3, S, S) float32 in [0, 1], label (S, S) int64.
    """

    def __init__(self, root: Union[str, Path], split: str = "train", task: str = "instrument",
                 transform: Optional[TransUNetAugmentation] = None, img_size: Optional[int] = 224,
                 augment: bool = False, seed: int = 1234, mask_encoding: Optional[str] = None,
                 cases: Optional[Sequence[str]] = None) -> None:
        if task not in CATARACT_TASKS:
            raise UsageError(f"unknown Cataract-1K task {task!r}; choose from {', '.join(CATARACT_TASKS)}")
        encoding = mask_encoding or ("binary" if task == "instrument" else "multiclass")
        if encoding not in _ENCODINGS:
            raise UsageError(f"mask_encoding must be one of {', '.join(_ENCODINGS)}, got {encoding!r}")
        self.root, self.split, self.task, self.mask_encoding = Path(root), split, task, encoding
        self.num_classes = CATARACT_TASKS[task]
        self.transform = transform if transform is not None else TransUNetAugmentation(img_size, augment, seed=seed)
        self.epoch = 0
        self.pairs: List[Tuple[Path, Path]] = self._find_pairs(cases)

    def _find_pairs(self, cases: Optional[Sequence[str]]) -> List[Tuple[Path, Path]]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"Cataract-1K root {self.root} does not exist")
        pairs = []
        if cases is not None:
            for case in cases:
                images = sorted((self.root / case / "img").glob("*.png"))
                if not images:
                    raise FileNotFoundError(f"no frames in {self.root / case / 'img'}")
                for image in images:
                    ann = self.root / case / "ann" / f"{image.name}.json"
                    if not ann.is_file():
                        raise FileNotFoundError(f"frame {image} has no annotation {ann}")
                    pairs.append((image, ann))
            return pairs
        folder = self.root / self.split / "images"
        images = sorted(folder.glob("*.png"))
        if not images:
            hint = " (for the published Supervisely layout give the case folders as cases: [...])" \
                if any(self.root.glob("*/ann")) else ""
            raise FileNotFoundError(f"no frames in {folder}{hint}")
        for image in images:
            label = self.root / self.split / "labels" / image.name
            if not label.is_file():
                raise FileNotFoundError(f"frame {image.name} has no mask {label}")
            pairs.append((image, label))
        return pairs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Item ``index`` at full resolution: image (3, H, W) float32 in [0, 1], label (H, W) int64."""
        from PIL import Image

        image_path, label_path = self.pairs[index]
        try:
            with Image.open(image_path) as handle:
                image = np.asarray(handle.convert("RGB"), dtype=np.float32) / 255.0
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read frame {image_path}: {exc}") from None
        if label_path.suffix == ".json":
            label = task_labels(rasterise_supervisely(label_path), self.task, "multiclass", str(label_path))
        else:
            label = task_labels(read_cataract_mask(label_path), self.task, self.mask_encoding, str(label_path))
        if label.shape != image.shape[:2]:
            raise UsageError(f"{label_path}: mask {label.shape} and frame {image.shape[:2]} sizes differ")
        return np.ascontiguousarray(image.transpose(2, 0, 1)), label

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, label = self.read(index)
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(self.epoch, index)
        return self.transform(image, label)
