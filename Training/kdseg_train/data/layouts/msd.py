"""Medical Segmentation Decathlon CT tasks that label one of our organs.

Antonelli et al., Nature Communications 2022; CC BY-SA 4.0.

As downloaded (``Task03_Liver/``, ``Task07_Pancreas/``, ``Task09_Spleen/``)::

    dataset.json      labels {"0": "background", "1": "liver", "2": "cancer"}, "training": [...]
    imagesTr/liver_0.nii.gz     labelsTr/liver_0.nii.gz

The task's organ is read from ``dataset.json``: exactly one label must name one of the
eight organs; lesion labels (cancer, tumour) lie inside that organ and count as it, as
in organ segmentation. Every case labels only that organ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.anatomy import SYNAPSE_ORGANS

from ...errors import UsageError
from .base import DatasetLayout, LayoutCase, labels_on_grid, normalised_name, read_json, require_dir

__all__ = ["MSDLayout", "msd_label_table"]

_LESION_WORDS = ("cancer", "tumour", "tumor", "lesion", "mass", "cyst")


def msd_label_table(path: Path, labels: Dict[str, str]) -> Tuple[int, Dict[int, int]]:
    """(organ id, {task label -> Synapse id}) of an MSD ``dataset.json`` ``labels`` section.

    Raises:
        ValueError: no label or several labels name one of the eight organs, or a label
            is neither that organ, a lesion nor background (all named in the message).
    """
    organs = {normalised_name(o.name): o.index for o in SYNAPSE_ORGANS}
    named = {int(k): normalised_name(v) for k, v in labels.items()}
    matches = {k: organs[v] for k, v in named.items() if v in organs}
    if len(matches) != 1:
        raise UsageError(f"{path}: labels {labels} name {len(matches)} of the organs "
                         f"{', '.join(o.name for o in SYNAPSE_ORGANS)}; the msd layout reads tasks that label "
                         "exactly one (Task03_Liver, Task07_Pancreas, Task09_Spleen)")
    (organ_label, organ), = matches.items()
    table = {organ_label: organ}
    for key, name in named.items():
        if key in (0, organ_label):
            continue
        if not any(word in name for word in _LESION_WORDS):
            raise UsageError(f"{path}: label {key} ({labels[str(key)]!r}) is neither the organ nor a lesion in it; "
                             "this task cannot be mapped to the 8 organs")
        table[key] = organ  # a tumour inside the organ is part of the organ
    return organ, table


class MSDLayout(DatasetLayout):
    name = "msd"
    title = "Medical Segmentation Decathlon"
    licence = "CC BY-SA 4.0"
    citation = "Antonelli et al., The Medical Segmentation Decathlon, Nature Communications 2022"

    def _meta(self, root: Path):
        meta = read_json(root / "dataset.json")
        modality = {str(v).upper() for v in (meta.get("modality") or {"0": "CT"}).values()}
        if modality != {"CT"}:
            raise UsageError(f"{root / 'dataset.json'}: modality {sorted(modality)}; only CT tasks can be converted")
        organ, table = msd_label_table(root / "dataset.json", meta.get("labels") or {})
        return meta, organ, table

    def cases(self, root: Path) -> List[LayoutCase]:
        root = require_dir(root, "Decathlon task")
        meta, organ, _ = self._meta(root)
        cases = []
        for i, entry in enumerate(meta.get("training") or []):
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise UsageError(f"{root / 'dataset.json'} [training][{i}] needs image and label")
            image, label = root / entry["image"], root / entry["label"]
            for role, path in (("image", image), ("label", label)):
                if not path.is_file():
                    raise FileNotFoundError(f"Decathlon case {entry['image']}: {role} {path} does not exist")
            cases.append(LayoutCase(Path(entry["image"]).name.split(".")[0], image, (label,), "training", (organ,)))
        if not cases:
            raise UsageError(f"{root / 'dataset.json'} lists no training case")
        return sorted(cases, key=lambda c: c.name)

    def synapse_labels(self, case: LayoutCase, image: sitk.Image) -> np.ndarray:
        root = next(p for p in case.labels[0].parents if (p / "dataset.json").is_file())
        _, _, table = self._meta(root)
        return labels_on_grid(case.labels[0], image, table)
