"""CT volumes with organ labels, loaded once into memory in the Lib's canonical orientation.

Images are read with the Lib's reader (NIfTI, NRRD, MHA or DICOM folder), labels are
resampled onto the image grid in physical space (nearest neighbour) so label files
with another index order (e.g. the DICOM example's reversed y) line up, then both are
brought to canonical LPS slices exactly as the Lib does at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.image_io import read_image
from KDSegmentationLib.orientation import to_canonical
from KDSegmentationLib.preprocessing import window_to_unit

from .label_maps import REMAP_TABLES, remap_labels

__all__ = ["CTVolume", "load_ct_volume"]


@dataclass
class CTVolume:
    """One case: windowed image (Z, Y, X) float32 in [0, 1], labels (Z, Y, X) uint8, spacing (z, y, x) mm."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing_zyx: Tuple[float, float, float]

    def slice_range(self, start: float = 0.0, stop: float = 1.0) -> "CTVolume":
        """The sub-volume between fractions ``start`` and ``stop`` of the z extent."""
        z = self.image.shape[0]
        a, b = int(round(start * z)), int(round(stop * z))
        return CTVolume(f"{self.name}[{a}:{b}]", self.image[a:b], self.labels[a:b], self.spacing_zyx)


def load_ct_volume(image_path: Path, label_path: Path, remap: str = "identity",
                   unlabeled: Iterable[int] = (), hu_window: Sequence[float] = (-125.0, 275.0),
                   name: Optional[str] = None) -> CTVolume:
    """Read an image/label pair and return it canonical, windowed and remapped to Synapse ids.

    Args:
        image_path: CT file or DICOM series folder.
        label_path: label map covering the same physical space.
        remap: key of :data:`REMAP_TABLES` ("totalsegmentator", "btcv", "dcmqi", "identity").
        unlabeled: Synapse organs this dataset does not annotate (their background is ignored).
        hu_window: HU clipping window (the model card's).
    """
    if remap not in REMAP_TABLES:
        raise ValueError(f"unknown remap {remap!r}; choose from {', '.join(REMAP_TABLES)}")
    image = read_image(image_path)
    label = sitk.ReadImage(str(label_path))
    if label.GetDimension() != 3:
        raise ValueError(f"label map {label_path} is {label.GetDimension()}D, expected 3D")
    label = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    image_c = to_canonical(image)
    label_c = to_canonical(label)
    hu = sitk.GetArrayFromImage(image_c)
    labels = remap_labels(sitk.GetArrayFromImage(label_c), REMAP_TABLES[remap], unlabeled)
    spacing = tuple(float(s) for s in reversed(image_c.GetSpacing()))
    return CTVolume(name or Path(image_path).name.split(".")[0], window_to_unit(hu, hu_window), labels,
                    spacing)  # type: ignore[arg-type]
