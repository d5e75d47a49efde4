"""Data entries that name a converted datalist, and the ``labeled:`` organs of an entry.

``kdseg-train convert --layout`` writes ``datalist.json`` (see
:mod:`kdseg_train.data.layout_convert`); a run config trains on it with one entry::

    data:
      train: [{datalist: data/amos/datalist.json, split: training},
              {datalist: data/msd_liver/datalist.json, split: training}]     # liver-only cases
      val:   [{datalist: data/amos/datalist.json, split: validation}]

:func:`expand_entries` turns such an entry into one image/label entry per case, with the
case's ``labeled`` organs: a case that labels only some organs is trained with the
partial-label losses, and scored only on the organs it labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from KDSegmentationLib.anatomy import organ_by_name
from ..errors import UsageError

__all__ = ["expand_entries", "parse_labeled", "DATALIST_SPLITS"]

DATALIST_SPLITS = ("training", "validation", "test")
_PASSED_ON = ("slices", "hu_window")


def parse_labeled(value: Optional[Iterable[Union[int, str]]], num_classes: int = 9) -> Optional[Tuple[int, ...]]:
    """Organ ids of a ``labeled:`` list (Synapse names such as ``liver`` or ids 1..C-1), sorted; None stays None.

    Raises:
        ValueError: an unknown name, an id outside 1..C-1, or an empty list.
    """
    if value is None:
        return None
    if isinstance(value, (str, int)):
        value = [value]
    ids = []
    for item in value:
        if isinstance(item, str) and not item.strip().isdigit():
            try:
                ids.append(organ_by_name(item).index)
            except KeyError:
                raise UsageError(f"labeled: unknown organ {item!r}; use aorta, gallbladder, kidney_left, "
                                 "kidney_right, liver, pancreas, spleen, stomach or their ids 1..8") from None
        else:
            ids.append(int(item))
    bad = [i for i in ids if not 1 <= i < num_classes]
    if bad or not ids:
        raise UsageError(f"labeled: must list organs 1..{num_classes - 1} (or their names), got {list(value)!r}")
    return tuple(sorted(set(ids)))


def _datalist_cases(entry: Dict[str, Any]) -> List[Dict[str, Any]]:
    path = Path(entry["datalist"])
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} does not exist; write it with kdseg-train convert OUT --layout ... "
                                "(relative paths are taken from the folder you run kdseg-train in)")
    meta = json.loads(path.read_text(encoding="utf-8"))
    split = entry.get("split", "training")
    if split not in DATALIST_SPLITS:
        raise UsageError(f"data entry {path}: split must be one of {', '.join(DATALIST_SPLITS)}, got {split!r}")
    cases = meta.get(split)
    if not cases:
        present = [s for s in DATALIST_SPLITS if meta.get(s)]
        raise UsageError(f"datalist {path} has no {split!r} cases (it has: {', '.join(present) or 'none'})")
    unknown = set(entry) - {"datalist", "split", "format", "name", "limit"} - set(_PASSED_ON)
    if unknown:
        raise UsageError(f"data entry {path}: unknown key(s) {sorted(unknown)}; a datalist entry takes split, limit, "
                         f"{', '.join(_PASSED_ON)}")
    limit = entry.get("limit")
    out = []
    for case in cases[: int(limit) if limit is not None else None]:
        image, label = Path(case["image"]), Path(case["label"])
        item = {"name": case["name"], "image": str(image if image.is_absolute() else path.parent / image),
                "label": str(label if label.is_absolute() else path.parent / label), "remap": "identity",
                "labeled": list(case.get("labeled") or [])}
        item.update({k: entry[k] for k in _PASSED_ON if k in entry})
        out.append(item)
    return out


def expand_entries(entries: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Entries with every ``datalist:`` entry replaced by its cases (other entries unchanged).

    Raises:
        FileNotFoundError: a missing datalist. ValueError: an unknown split or key, an empty split.
    """
    out: List[Dict[str, Any]] = []
    for entry in entries or []:
        if isinstance(entry, dict) and "datalist" in entry and entry.get("format", "nifti") == "nifti" \
                and "image" not in entry:
            out.extend(_datalist_cases(entry))
        else:
            out.append(entry)
    return out
