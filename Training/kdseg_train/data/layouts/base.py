"""What every public-dataset layout reader provides: its cases and their labels in Synapse order.

A layout reader knows one dataset exactly as its owners distribute it (folder names,
label files, label ids, official splits). It lists :class:`LayoutCase` objects and,
for one case, returns the label map on the CT's own voxel grid remapped to the Synapse
order of KDSegmentation (0 background, 1 aorta ... 8 stomach), with ``IGNORE_INDEX``
where the label file does not cover the image. Which organs a case annotates is
declared in :attr:`LayoutCase.labeled`: a liver-only dataset says ``(5,)``, and its
background stays 0, meaning "none of the labelled organs" (partial-label training
decides what that implies for the other organs).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ...errors import UsageError
from ..ct_volumes import read_label_on_grid
from ..label_maps import IGNORE_INDEX, remap_labels

__all__ = ["LayoutCase", "DatasetLayout", "ALL_ORGANS", "SPLITS", "labels_on_grid", "read_json", "require_dir"]

ALL_ORGANS: Tuple[int, ...] = tuple(range(1, 9))
"""Synapse ids of the eight organs."""

SPLITS: Tuple[str, ...] = ("training", "validation", "test")
"""Split names of converted datalists (MONAI/Decathlon section names)."""


@dataclass(frozen=True)
class LayoutCase:
    """One labelled CT of a public dataset.

    Attributes:
        name: case id as the dataset names it (``s0011``, ``amos_0001``, ``case0001``...).
        image: the CT file.
        labels: the label file(s) the layout reads for this case.
        split: ``training``, ``validation`` or ``test`` (the dataset's official split).
        labeled: Synapse organ ids this case annotates (all eight for fully labelled data).
    """

    name: str
    image: Path
    labels: Tuple[Path, ...]
    split: str
    labeled: Tuple[int, ...] = ALL_ORGANS


class DatasetLayout(ABC):
    """Reader of one dataset layout.

    Attributes:
        name: layout name on the command line (``kdseg-train convert --layout NAME``).
        title: the dataset's name.
        licence: the data licence as its owners state it (goes into model cards).
        citation: what to cite.
    """

    name: str = ""
    title: str = ""
    licence: str = ""
    citation: str = ""

    @abstractmethod
    def cases(self, root: Path) -> List[LayoutCase]:
        """Every labelled case under ``root`` (the folder as downloaded), sorted by name.

        Raises:
            FileNotFoundError: ``root`` or a file the layout requires is missing (named).
            ValueError: the folder does not look like this dataset (the difference is named).
        """

    @abstractmethod
    def synapse_labels(self, case: LayoutCase, image: sitk.Image) -> np.ndarray:
        """The case's labels on ``image``'s grid, (Z, Y, X) uint8 in Synapse ids, ``IGNORE_INDEX`` where unknown."""


def labels_on_grid(label_path: Path, image: sitk.Image, table: Mapping[int, int]) -> np.ndarray:
    """One label file resampled onto ``image`` in physical space and remapped with ``table``.

    Source ids outside ``table`` become background; voxels the file does not cover
    become ``IGNORE_INDEX``. Returns (Z, Y, X) uint8 in ``image``'s index order.
    """
    source, covered = read_label_on_grid(label_path, image)
    labels = remap_labels(source, table)
    labels[~covered] = IGNORE_INDEX
    return labels


def read_json(path: Path) -> Dict[str, Any]:
    """A JSON object from ``path``, with the file named in every error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; point --source at the dataset folder as downloaded")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a JSON object")
    return data


def require_dir(root: Path, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {root} does not exist")
    return root


def normalised_name(name: str) -> str:
    """Label names compared without case, spaces, underscores or hyphens (``Gall Bladder`` == ``gallbladder``)."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def check_label_names(path: Path, labels: Mapping[str, Any], expected: Mapping[int, Sequence[str]]) -> None:
    """Refuse a dataset.json whose label ids name other structures than the layout's table assumes."""
    for index, names in expected.items():
        found = labels.get(str(index))
        if found is None or normalised_name(found) not in {normalised_name(n) for n in names}:
            raise UsageError(f"{path}: label {index} is {found!r}, expected {names[0]!r}; this is not the dataset "
                             "version the layout reads (check --layout, or convert with a datalist and your own remap)")
