"""KiTS19 / KiTS21 / KiTS23 kidney tumour challenges (Heller et al.; CC BY-NC-SA 4.0).

As downloaded (``kits19/data`` or ``kits21/kits21/data``)::

    case_00000/imaging.nii.gz
    case_00000/segmentation.nii.gz        (KiTS21 also: aggregated_MAJ_seg.nii.gz)

Labels: 1 kidney, 2 tumour, 3 cyst (KiTS21+). All three are kidney tissue; the dataset
does not say left or right, so every kidney voxel is assigned by the side of the
patient's midline it lies on, in physical (LPS) space: x above the midline is the
patient's left. The midline is the median x of the body (voxels above -500 HU) in the
slices that hold kidney. KiTS19's files store the axial axis first with an unusual
affine; working in physical space makes that irrelevant.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import SimpleITK as sitk

from ...errors import UsageError
from ..ct_volumes import read_label_on_grid
from ..label_maps import IGNORE_INDEX
from .base import DatasetLayout, LayoutCase, require_dir

__all__ = ["KiTSLayout", "physical_coordinate", "body_midline_x", "split_kidneys_by_midline"]

KIDNEY_LEFT, KIDNEY_RIGHT = 3, 4
BODY_HU = -500.0
_LABEL_FILES = ("segmentation.nii.gz", "aggregated_MAJ_seg.nii.gz")


def physical_coordinate(image: sitk.Image, axis: int) -> np.ndarray:
    """LPS coordinate ``axis`` (0 x: + = patient's left, 2 z: + = superior) of every voxel, in mm.

    Returns (Z, Y, X) in the image's index order, whatever its direction matrix.
    """
    nx, ny, nz = image.GetSize()
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    step = direction[axis] * np.asarray(image.GetSpacing())  # mm per index step along i, j, k
    i, j, k = (np.arange(n) * s for n, s in zip((nx, ny, nz), step))
    return image.GetOrigin()[axis] + k[:, None, None] + j[None, :, None] + i[None, None, :]


def body_midline_x(hu: np.ndarray, x_mm: np.ndarray, region: np.ndarray) -> float:
    """Median physical x (mm) of the body voxels (HU > -500) inside ``region``.

    Args:
        hu, x_mm, region: (Z, Y, X) arrays: CT in HU, physical x, boolean region.
    """
    body = (hu > BODY_HU) & region
    if not body.any():
        raise UsageError("no body voxels (HU > -500) at the height of the kidneys; is this a CT in HU?")
    return float(np.median(x_mm[body]))


def split_kidneys_by_midline(kidney: np.ndarray, hu: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Kidney mask -> Synapse kidney_left (3) / kidney_right (4) by the patient's midline.

    The midline is the median x of the body between the lowest and highest physical z of
    the kidney voxels (the body cross-sections through the kidneys); voxels with a larger
    x lie on the patient's left (LPS).

    Args:
        kidney: (Z, Y, X) boolean, on ``image``'s grid. hu: (Z, Y, X) CT in HU.
        image: the CT (geometry only).
    """
    out = np.zeros(kidney.shape, np.uint8)
    if not kidney.any():
        return out
    x_mm, z_mm = physical_coordinate(image, 0), physical_coordinate(image, 2)
    heights = z_mm[kidney]
    region = (z_mm >= heights.min()) & (z_mm <= heights.max())
    midline = body_midline_x(hu, x_mm, region)
    out[kidney & (x_mm > midline)] = KIDNEY_LEFT
    out[kidney & (x_mm <= midline)] = KIDNEY_RIGHT
    return out


class KiTSLayout(DatasetLayout):
    name = "kits"
    title = "KiTS kidney tumour segmentation challenge (KiTS19/21/23)"
    licence = "CC BY-NC-SA 4.0"
    citation = "Heller et al., The KiTS19 / KiTS21 challenge, Medical Image Analysis 2021 and arXiv 2307.01984"

    def cases(self, root: Path) -> List[LayoutCase]:
        root = require_dir(root, "KiTS")
        if not any(root.glob("case_*")) and (root / "data").is_dir():
            root = root / "data"
        cases = []
        for folder in sorted(root.glob("case_*")):
            image = folder / "imaging.nii.gz"
            label = next((folder / n for n in _LABEL_FILES if (folder / n).is_file()), None)
            if not image.is_file() or label is None:
                continue  # test cases come without segmentation
            cases.append(LayoutCase(folder.name, image, (label,), "training", (KIDNEY_LEFT, KIDNEY_RIGHT)))
        if not cases:
            raise FileNotFoundError(f"{root} holds no case_NNNNN/ folder with imaging.nii.gz and "
                                    f"{' or '.join(_LABEL_FILES)}")
        return cases

    def synapse_labels(self, case: LayoutCase, image: sitk.Image) -> np.ndarray:
        source, covered = read_label_on_grid(case.labels[0], image)
        hu = sitk.GetArrayViewFromImage(image)
        out = split_kidneys_by_midline(source > 0, np.asarray(hu), image)
        out[~covered] = IGNORE_INDEX
        return out
