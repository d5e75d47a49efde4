"""Convert a public dataset, as downloaded, into labels in Synapse order plus a datalist that training reads.

    kdseg-train convert OUT --layout amos --source /data/amos22

writes ``OUT/labels/<case>.nii.gz`` (uint8 on the CT's own grid: 0 background, 1..8 the
organs, 255 where the source label does not cover the CT) and ``OUT/datalist.json``::

    {"layout": "amos", "source": "/data/amos22", "licence": "CC BY 4.0", "citation": ...,
     "labels": {"0": "background", "1": "aorta", ...},
     "training":   [{"name": "amos_0001", "image": "/data/amos22/imagesTr/amos_0001.nii.gz",
                     "label": "labels/amos_0001.nii.gz", "labeled": ["aorta", ...]}, ...],
     "validation": [...], "test": [...]}

The CTs are not copied (training reads them where they are). ``labeled`` lists the organs
a case annotates; partial-label training uses it. With ``synapse=True`` the cases are
also written in TransUNet's Synapse layout (training split as ``train_npz`` slices, the
others as ``test_vol_h5`` volumes) for the paper's protocol. Each file is written under a
temporary name and renamed; a case whose label file exists is skipped (``overwrite``
redoes it), so an interrupted conversion continues where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.anatomy import SYNAPSE_ORGANS
from KDSegmentationLib.atomic_files import write_text_atomic
from KDSegmentationLib.imaging.image_files import read_image, write_image_atomic

from ..errors import UsageError
from .layouts import SPLITS, LayoutCase, get_layout

__all__ = ["convert_layout", "convert_case", "DATALIST_NAME"]

DATALIST_NAME = "datalist.json"
_NAMES = {organ.index: organ.name for organ in SYNAPSE_ORGANS}


def convert_case(layout_name: str, case: LayoutCase, label_path: Path) -> sitk.Image:
    """Write one case's Synapse label map to ``label_path`` (atomically); return it as an image."""
    layout = get_layout(layout_name)
    image = read_image(case.image)
    labels = layout.synapse_labels(case, image)
    label_image = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=np.uint8))
    label_image.CopyInformation(image)
    write_image_atomic(label_image, label_path)
    return label_image


def convert_layout(layout_name: str, source: Path, output: Path, splits: Optional[Sequence[str]] = None,
                   overwrite: bool = False, synapse: bool = False,
                   report: Callable[[str], None] = lambda line: None) -> Path:
    """Convert every labelled case of ``source`` (a dataset folder as downloaded); return the datalist path.

    Args:
        layout_name: a name of :data:`kdseg_train.data.layouts.LAYOUTS`.
        source: the dataset folder.
        output: folder for ``labels/``, ``datalist.json`` (and the Synapse layout).
        splits: keep only these splits (``training``, ``validation``, ``test``); default all.
        overwrite: redo cases whose label file exists.
        synapse: also write TransUNet's Synapse layout into ``output``.
        report: called with one line per case.

    Raises:
        FileNotFoundError / ValueError: from the layout reader, naming what differs from the
            layout as downloaded.
    """
    layout = get_layout(layout_name)
    if splits is not None:
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise UsageError(f"unknown split(s) {unknown}; choose from {', '.join(SPLITS)}")
    cases = [c for c in layout.cases(Path(source)) if splits is None or c.split in splits]
    if not cases:
        raise UsageError(f"no {layout.name} case in {source} belongs to the split(s) {', '.join(splits or SPLITS)}")
    output = Path(output)
    (output / "labels").mkdir(parents=True, exist_ok=True)
    sections: Dict[str, List[Dict[str, object]]] = {split: [] for split in SPLITS}
    for case in cases:
        label_path = output / "labels" / f"{case.name}.nii.gz"
        if overwrite or not label_path.is_file():
            convert_case(layout_name, case, label_path)
            report(f"{case.image} -> {label_path}")
        else:
            report(f"{label_path} exists, kept (use --overwrite to redo)")
        if synapse:
            _write_synapse(case, label_path, output)
        sections[case.split].append({"name": case.name, "image": str(Path(case.image).resolve()),
                                     "label": f"labels/{label_path.name}",
                                     "labeled": [_NAMES[i] for i in case.labeled]})
    datalist = {"layout": layout.name, "title": layout.title, "source": str(Path(source).resolve()),
                "licence": layout.licence, "citation": layout.citation,
                "labels": {"0": "background", **{str(i): n for i, n in _NAMES.items()}},
                **{split: entries for split, entries in sections.items() if entries}}
    return write_text_atomic(output / DATALIST_NAME, json.dumps(datalist, indent=2) + "\n")


def _write_synapse(case: LayoutCase, label_path: Path, output: Path) -> None:
    from .ct_volumes import load_ct_volume
    from .synapse import write_synapse_case

    if tuple(case.labeled) != tuple(_NAMES):
        raise UsageError(f"case {case.name} labels only {[_NAMES[i] for i in case.labeled]}; TransUNet's Synapse "
                         "layout has no way to say so. Train partially labelled data from the datalist instead")
    volume = load_ct_volume(case.image, label_path, "identity", name=case.name)
    write_synapse_case(volume, output, "train" if case.split == "training" else "test_vol")
