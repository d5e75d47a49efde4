"""AMOS 2022 (Ji et al., NeurIPS 2022 Datasets and Benchmarks; Zenodo, CC BY 4.0).

As downloaded (``amos22/``)::

    dataset.json      labels {"0": "background", "1": "spleen", ...}, training/validation lists
    imagesTr/amos_0001.nii.gz   labelsTr/amos_0001.nii.gz
    imagesVa/...                labelsVa/...
    imagesTs/...                (no labels)

15 organs: 1 spleen, 2 right kidney, 3 left kidney, 4 gall bladder, 5 esophagus,
6 liver, 7 stomach, 8 aorta (spelled "arota" in the official file), 9 postcava,
10 pancreas, 11/12 right/left adrenal gland, 13 duodenum, 14 bladder, 15 prostate/uterus.
Case ids above 500 are MRI scans; this CT project leaves them out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from ...errors import UsageError
from .base import DatasetLayout, LayoutCase, check_label_names, labels_on_grid, read_json, require_dir

__all__ = ["AMOSLayout", "AMOS_TO_SYNAPSE", "AMOS_FIRST_MRI_ID"]

AMOS_TO_SYNAPSE: Dict[int, int] = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 10: 6, 1: 7, 7: 8}
AMOS_FIRST_MRI_ID = 501
_EXPECTED_NAMES = {1: ("spleen",), 2: ("right kidney",), 3: ("left kidney",), 4: ("gall bladder", "gallbladder"),
                   6: ("liver",), 7: ("stomach",), 8: ("aorta", "arota"), 10: ("pancreas",)}
_SECTIONS = {"training": "training", "validation": "validation"}


class AMOSLayout(DatasetLayout):
    name = "amos"
    title = "AMOS 2022 (CT part)"
    licence = "CC BY 4.0"
    citation = "Ji et al., AMOS: A Large-Scale Abdominal Multi-Organ Benchmark, NeurIPS 2022"

    def cases(self, root: Path) -> List[LayoutCase]:
        root = require_dir(root, "AMOS")
        meta = read_json(root / "dataset.json")
        check_label_names(root / "dataset.json", meta.get("labels") or {}, _EXPECTED_NAMES)
        cases = []
        for section, split in _SECTIONS.items():
            for i, entry in enumerate(meta.get(section) or []):
                if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                    raise UsageError(f"{root / 'dataset.json'} [{section}][{i}] needs image and label")
                image, label = root / entry["image"], root / entry["label"]
                name = Path(entry["image"]).name.split(".")[0]
                number = re.search(r"(\d+)$", name)
                if number and int(number.group(1)) >= AMOS_FIRST_MRI_ID:
                    continue  # MRI: not for a CT model
                for role, path in (("image", image), ("label", label)):
                    if not path.is_file():
                        raise FileNotFoundError(f"AMOS {section} case {name}: {role} {path} does not exist")
                cases.append(LayoutCase(name, image, (label,), split))
        if not cases:
            raise UsageError(f"{root / 'dataset.json'} lists no labelled CT case (training/validation)")
        return sorted(cases, key=lambda c: c.name)

    def synapse_labels(self, case: LayoutCase, image: sitk.Image) -> np.ndarray:
        return labels_on_grid(case.labels[0], image, AMOS_TO_SYNAPSE)
