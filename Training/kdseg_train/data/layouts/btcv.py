"""BTCV abdomen, "Multi-Atlas Labeling Beyond the Cranial Vault" (Landman et al. 2015; Synapse syn3193805).

As downloaded (``RawData/Training``)::

    img/img0001.nii.gz    label/label0001.nii.gz      (30 cases, 13 organs)

Labels: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver,
7 stomach, 8 aorta, 9 IVC, 10 portal and splenic veins, 11 pancreas, 12/13 adrenal
glands. The split is TransUNet's: 12 test cases, the other 18 for training. Case names
follow TransUNet's Synapse files (``case0001``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

import numpy as np
import SimpleITK as sitk

from ..label_maps import BTCV_TO_SYNAPSE
from .base import DatasetLayout, LayoutCase, labels_on_grid, require_dir

__all__ = ["BTCVLayout", "TRANSUNET_TEST_CASES"]

TRANSUNET_TEST_CASES = ("0008", "0022", "0038", "0036", "0032", "0002", "0029", "0003", "0001", "0004", "0025",
                        "0035")


class BTCVLayout(DatasetLayout):
    name = "btcv"
    title = "BTCV abdomen (Multi-Atlas Labeling Beyond the Cranial Vault)"
    licence = "Synapse syn3193805 conditions of use (registration required)"
    citation = "Landman et al., MICCAI 2015 Multi-Atlas Labeling Beyond the Cranial Vault challenge"

    def cases(self, root: Path) -> List[LayoutCase]:
        root = require_dir(root, "BTCV")
        if not (root / "img").is_dir() and (root / "Training" / "img").is_dir():
            root = root / "Training"  # RawData/ given instead of RawData/Training/
        images, labels = root / "img", root / "label"
        for folder in (images, labels):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} does not exist; BTCV's RawData/Training holds img/ and label/")
        cases = []
        for image in sorted(images.glob("img*.nii.gz")):
            match = re.fullmatch(r"img(\d+)\.nii\.gz", image.name)
            if not match:
                continue
            number = match.group(1)
            label = labels / f"label{number}.nii.gz"
            if not label.is_file():
                raise FileNotFoundError(f"BTCV image {image.name} has no {label}")
            split = "test" if number in TRANSUNET_TEST_CASES else "training"
            cases.append(LayoutCase(f"case{number}", image, (label,), split))
        if not cases:
            raise FileNotFoundError(f"{images} holds no imgNNNN.nii.gz files")
        return cases

    def synapse_labels(self, case: LayoutCase, image: sitk.Image) -> np.ndarray:
        return labels_on_grid(case.labels[0], image, BTCV_TO_SYNAPSE)
