"""TotalSegmentator dataset (Wasserthal et al., Radiology: AI 2023; Zenodo, CC BY 4.0).

As downloaded::

    meta.csv                         image_id;...;split   (train / val / test, ';'-separated)
    s0000/ct.nii.gz
    s0000/segmentations/<structure>.nii.gz   one binary mask per structure (117 in v2)

The eight organ files have exactly our organ names (``aorta.nii.gz``,
``kidney_left.nii.gz`` ...). Every other structure is known anatomy, not one of the
eight organs, so the whole case is fully labelled.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.anatomy import SYNAPSE_ORGANS

from ...errors import UsageError
from ..ct_volumes import read_label_on_grid
from ..label_maps import IGNORE_INDEX
from .base import DatasetLayout, LayoutCase, require_dir

__all__ = ["TotalSegmentatorLayout", "read_meta_splits"]

_SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def read_meta_splits(path: Path) -> Dict[str, str]:
    """``image_id -> split`` from TotalSegmentator's ``meta.csv`` (';' or ',' separated)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; the TotalSegmentator dataset ships meta.csv with its "
                                "train/val/test split next to the sNNNN folders")
    text = path.read_text(encoding="utf-8-sig")
    delimiter = ";" if text.splitlines()[0].count(";") > text.splitlines()[0].count(",") else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if not rows or "image_id" not in rows[0] or "split" not in rows[0]:
        raise UsageError(f"{path} needs the columns image_id and split (found {list(rows[0]) if rows else 'no rows'})")
    splits = {}
    for row in rows:
        split = str(row["split"]).strip()
        if split not in _SPLIT_NAMES:
            raise UsageError(f"{path}: case {row['image_id']} has split {split!r}; expected train, val or test")
        splits[str(row["image_id"]).strip()] = _SPLIT_NAMES[split]
    return splits


class TotalSegmentatorLayout(DatasetLayout):
    name = "totalsegmentator"
    title = "TotalSegmentator dataset"
    licence = "CC BY 4.0"
    citation = "Wasserthal et al., TotalSegmentator, Radiology: Artificial Intelligence 2023"

    def cases(self, root: Path) -> List[LayoutCase]:
        root = require_dir(root, "TotalSegmentator")
        splits = read_meta_splits(root / "meta.csv")
        missing = [case for case in splits if not (root / case / "ct.nii.gz").is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} case(s) of {root / 'meta.csv'} have no ct.nii.gz: "
                                    f"{', '.join(sorted(missing)[:5])}{' ...' if len(missing) > 5 else ''}; "
                                    "unpack the whole dataset")
        cases = []
        for case, split in sorted(splits.items()):
            folder = root / case / "segmentations"
            files = tuple(folder / f"{organ.name}.nii.gz" for organ in SYNAPSE_ORGANS)
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise FileNotFoundError(f"{folder} lacks {', '.join(absent)}")
            cases.append(LayoutCase(case, root / case / "ct.nii.gz", files, split))
        return cases

    def synapse_labels(self, case: LayoutCase, image: sitk.Image) -> np.ndarray:
        out = None
        for organ, path in zip(SYNAPSE_ORGANS, case.labels):
            mask, covered = read_label_on_grid(path, image)
            if out is None:
                out = np.where(covered, 0, IGNORE_INDEX).astype(np.uint8)
            # Masks overlap only at rare boundary voxels; the later organ in Synapse order wins.
            out[(mask > 0) & covered] = organ.index
        return out
