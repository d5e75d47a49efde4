"""The cases of a run config: training dataset and validation/evaluation cases, loaded once into memory.

A data entry (``data.train``, ``data.val``, ``evaluate.cases``) is one of

- an image/label pair (``format: nifti``, the default when ``image`` is given):
  ``{image, label, remap, unlabeled, labeled, slices, name}``; images may be NIfTI, NRRD,
  MHA or a DICOM series folder; ``slices: [a, b]`` keeps that z-fraction (held-back
  slices); ``labeled: [liver]`` declares a partially labelled case (partial-label losses,
  scored on those organs only);
- a converted dataset, ``{datalist: OUT/datalist.json, split: training, limit: N}``
  (``kdseg-train convert --layout``): one image/label entry per case, with its ``labeled``
  organs (:mod:`kdseg_train.data.datalist_entries`);
- a Synapse-layout dataset of TransUNet: ``{format: synapse, root, split: train|test_vol}``;
- Cataract-1K frames: ``{format: cataract1k, root, split, task: instrument|anatomy_instrument}``.

Volumes are read, reoriented and windowed once here; the training loop never touches
files again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from KDSegmentationLib.inference.model_grid import ModelGrid

from .data import AxialSliceDataset, CTVolume, load_ct_volume
from .data.datalist_entries import expand_entries, parse_labeled
from .data.grid_slices import GridSliceDataset
from .data.tiny_data_augmentation import TinyDataAugmentation
from .errors import UsageError

__all__ = ["EvaluationCase", "entry_format", "load_cases", "build_training_dataset", "model_grid", "AUGMENTATIONS",
           "has_partial_labels"]

FORMATS = ("nifti", "synapse", "cataract1k")


@dataclass
class EvaluationCase:
    """One case to validate/evaluate on.

    Attributes:
        name: unique case name.
        image: (Z, H, W) windowed CT in [0, 1], or (Z, 3, H, W) RGB frames.
        labels: (Z, H, W) uint8 target labels (255 = not annotated).
        spacing_zyx: voxel size in mm (1.0 where unknown, e.g. Synapse arrays, frames).
        organs: label indices the source annotates (metrics are computed for these only).
        source: the config entry it came from (for the Lib pipeline: image/label paths).
        z_range: [first, stop) slices of the source volume this case covers.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing_zyx: Tuple[float, float, float]
    organs: Tuple[int, ...]
    source: Dict[str, Any]
    z_range: Tuple[int, int]


def entry_format(entry: Dict[str, Any]) -> str:
    """The ``format`` of a data entry (``nifti`` when it names an image)."""
    if not isinstance(entry, dict):
        raise UsageError(f"data entry {entry!r} must be a mapping such as {{image: ..., label: ..., remap: ...}}")
    fmt = entry.get("format", "nifti" if "image" in entry else None)
    if fmt not in FORMATS:
        raise UsageError(f"data entry {entry}: format must be one of {', '.join(FORMATS)} (or give image: and "
                         "label: paths)")
    if fmt == "nifti":
        for key in ("image", "label"):
            if key not in entry:
                raise UsageError(f"data entry {entry} has no {key}: path")
            if not Path(entry[key]).exists():
                raise FileNotFoundError(f"data entry {entry.get('name', entry['image'])}: {key} {entry[key]} does "
                                        "not exist (paths are relative to the folder you run kdseg-train from)")
    elif not Path(entry.get("root", "")).is_dir():
        raise FileNotFoundError(f"data entry {entry}: root folder {entry.get('root')!r} does not exist")
    return fmt


def _volume_range(volume: CTVolume, entry: Dict[str, Any]) -> Tuple[CTVolume, Tuple[int, int]]:
    z = volume.image.shape[0]
    if "slices" not in entry:
        return volume, (0, z)
    start, stop = entry["slices"]
    if not 0 <= float(start) < float(stop) <= 1:
        raise UsageError(f"data entry {entry.get('name')}: slices must be [a, b] fractions with 0 <= a < b <= 1")
    a, b = int(round(float(start) * z)), int(round(float(stop) * z))
    return volume.slice_range(float(start), float(stop)), (a, b)


def _ct_cases(entry: Dict[str, Any], fmt: str, hu_window: Sequence[float], num_classes: int) -> List[EvaluationCase]:
    if fmt == "synapse":
        from .data.synapse import read_synapse_split

        volumes = read_synapse_split(Path(entry["root"]), entry.get("split", "test_vol"))
        return [EvaluationCase(v.name, v.image, v.labels, v.spacing_zyx, tuple(range(1, num_classes)), dict(entry),
                               (0, v.image.shape[0])) for v in volumes]
    unlabeled = tuple(int(i) for i in entry.get("unlabeled", ()))
    labeled = parse_labeled(entry.get("labeled"), num_classes)
    if labeled is not None and unlabeled:
        raise UsageError(f"data entry {entry.get('name', entry['image'])}: give labeled: (partial-label training) or "
                         "unlabeled: (background of those organs ignored), not both")
    volume = load_ct_volume(Path(entry["image"]), Path(entry["label"]), entry.get("remap", "identity"), unlabeled,
                            hu_window, entry.get("name"))
    volume, z_range = _volume_range(volume, entry)
    organs = labeled if labeled is not None else tuple(i for i in range(1, num_classes) if i not in unlabeled)
    name = entry.get("name") or volume.name
    return [EvaluationCase(name, volume.image, volume.labels, volume.spacing_zyx, organs, dict(entry), z_range)]


def _cataract_cases(entry: Dict[str, Any], img_size: int) -> List[EvaluationCase]:
    from .data.cataract import Cataract1KDataset

    dataset = Cataract1KDataset(Path(entry["root"]), entry.get("split", "val"), entry.get("task", "instrument"),
                                img_size=img_size, augment=False)
    cases = []
    for i, (image_path, _) in enumerate(dataset.pairs):
        image, label = dataset[i]
        cases.append(EvaluationCase(image_path.stem, image.numpy()[None], label.numpy().astype(np.uint8)[None],
                                    (1.0, 1.0, 1.0), tuple(range(1, dataset.num_classes)), dict(entry), (0, 1)))
    return cases


def load_cases(entries: Sequence[Dict[str, Any]], hu_window: Sequence[float], num_classes: int,
               img_size: int) -> List[EvaluationCase]:
    """Read every entry into :class:`EvaluationCase` objects (names made unique)."""
    cases: List[EvaluationCase] = []
    for entry in expand_entries(entries or []):
        fmt = entry_format(entry)
        cases.extend(_cataract_cases(entry, img_size) if fmt == "cataract1k"
                     else _ct_cases(entry, fmt, hu_window, num_classes))
    seen: Dict[str, int] = {}
    for case in cases:
        if case.name in seen:
            seen[case.name] += 1
            case.name = f"{case.name}_{seen[case.name]}"
        else:
            seen[case.name] = 0
    return cases


class _EpochConcat(ConcatDataset):
    """ConcatDataset that forwards ``set_epoch`` to its parts."""

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)


AUGMENTATIONS = ("transunet", "tiny_data")


def model_grid(model: Dict[str, Any]) -> ModelGrid:
    """The input grid a ``model:`` section defines (``img_size`` square, ``pixel_spacing_mm`` or resize mode)."""
    size = int(model["img_size"])
    spacing = model.get("pixel_spacing_mm")
    return ModelGrid(size, size, None if spacing is None else float(spacing))


def build_training_dataset(data: Dict[str, Any], img_size: int, num_classes: int, seed: int,
                           volumes: Optional[List[EvaluationCase]] = None,
                           grid: Optional[ModelGrid] = None) -> Dataset:
    """The training dataset of ``data.train`` (CT slices, or frames).

    ``data.augmentation: transunet`` resizes each slice with TransUNet's augmentation
    (resize mode only); ``tiny_data`` puts CT slices on ``grid`` (physical-size or resize
    mode, exactly as the Lib) and augments them with :class:`TinyDataAugmentation`.

    Returns a dataset whose items are (image (C, S, S) float32, label (S, S) int64) and
    whose augmentation is seeded by (seed, key, index) through ``set_epoch``.
    """
    entries = expand_entries(data.get("train") or [])
    if not entries:
        raise UsageError("data.train lists no cases; add image/label entries (see Training/README.md)")
    grid = grid if grid is not None else ModelGrid(img_size, img_size)
    augmentation = data.get("augmentation", "transunet")
    if augmentation not in AUGMENTATIONS:
        raise UsageError(f"data.augmentation must be one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}")
    if grid.physical and augmentation == "transunet":
        raise UsageError("model.pixel_spacing_mm is set but data.augmentation is transunet, which resizes every "
                         "slice to the grid; set data.augmentation=tiny_data (or model.pixel_spacing_mm=null)")
    augment = bool(data.get("augment", True))
    parts: List[Dataset] = []
    ct_volumes: List[CTVolume] = []
    for entry in entries:
        fmt = entry_format(entry)
        if fmt == "cataract1k":
            from .data.cataract import Cataract1KDataset

            if augmentation != "transunet":
                raise UsageError("data.augmentation tiny_data is for CT slices; Cataract-1K frames use transunet")
            parts.append(Cataract1KDataset(Path(entry["root"]), entry.get("split", "train"),
                                           entry.get("task", "instrument"), img_size=img_size, augment=augment,
                                           seed=seed))
        else:
            for case in _ct_cases(entry, fmt, data["hu_window"], num_classes):
                partial = "labeled" in entry and len(case.organs) < num_classes - 1
                ct_volumes.append(CTVolume(case.name, case.image, case.labels, case.spacing_zyx,
                                           labeled=case.organs if partial else None))
    if ct_volumes and augmentation == "tiny_data":
        parts.insert(0, GridSliceDataset(ct_volumes, grid, TinyDataAugmentation(img_size, augment, seed=seed),
                                         int(data.get("canvas_margin", 32)), num_classes=num_classes))
    elif ct_volumes:
        parts.insert(0, AxialSliceDataset(ct_volumes, img_size, augment, seed, num_classes=num_classes))
    return parts[0] if len(parts) == 1 else _EpochConcat(parts)


def has_partial_labels(dataset: Dataset) -> bool:
    """Whether a training dataset holds partially labelled CT volumes (then the partial-label loss is needed)."""
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    for part in parts:
        if any(getattr(v, "labeled", None) is not None for v in getattr(part, "volumes", ())):
            return True
        if any(labeled is not None for labeled in getattr(part, "labeled", ())):
            return True
    return False
