"""CT volumes with organ labels, loaded into memory in the Lib's canonical orientation.

Images are read with the Lib's reader (NIfTI, NRRD, MHA or a DICOM series folder) and
checked like the Lib checks its input. Labels are resampled onto the image grid in
physical space (SimpleITK, nearest neighbour), so a label file with another index order
(e.g. the DICOM example's label with y reversed) lines up voxel for voxel; image voxels
the label file does not cover become ``IGNORE_INDEX``. Both are then brought to
canonical LPS (``KDSegmentationLib.imaging.orientation.to_canonical``) and the image is
windowed with ``KDSegmentationLib.inference.preprocessing.window_to_unit``: exactly what the Lib
feeds the model at inference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.imaging.image_files import read_image
from KDSegmentationLib.imaging.intensity_checks import check_ct_intensities
from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.inference.input_defaults import DEFAULT_HU_WINDOW
from KDSegmentationLib.inference.preprocessing import window_to_unit

from ..errors import UsageError
from .label_maps import IGNORE_INDEX, remap_labels, resolve_remap

__all__ = ["CTVolume", "load_ct_volume", "read_label_on_grid", "DEFAULT_HU_WINDOW"]

_log = logging.getLogger("kdseg_train")

@dataclass
class CTVolume:
    """One case in memory.

    Attributes:
        name: case name.
        image: (Z, Y, X) float32 in [0, 1] (windowed), axial slices first, canonical LPS.
        labels: (Z, Y, X) uint8 in target (Synapse) order; ``IGNORE_INDEX`` where unknown.
        spacing_zyx: voxel size in mm, (1, 1, 1) when the source does not record it
            (Synapse arrays).
        first_slice: index in the source volume of ``image[0]`` (non-zero after
            :meth:`slice_range`).
        labeled: organ ids the case annotates when it labels only some of them (its
            background then means "none of these"; training encodes it with
            :func:`~kdseg_train.data.partial_targets.encode_partial_labels`); None: all.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing_zyx: Tuple[float, float, float]
    first_slice: int = 0
    labeled: Optional[Tuple[int, ...]] = None

    def __post_init__(self) -> None:
        if self.image.shape != self.labels.shape or self.image.ndim != 3:
            raise UsageError(f"case {self.name}: image {self.image.shape} and labels {self.labels.shape} must be "
                             "3D arrays of the same shape")

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])

    def slice_bounds(self, start: float = 0.0, stop: float = 1.0) -> Tuple[int, int]:
        """Slice indices [a, b) between fractions ``start`` and ``stop`` of the z extent."""
        if not 0.0 <= float(start) < float(stop) <= 1.0:
            raise UsageError(f"slice range must be fractions 0 <= start < stop <= 1, got [{start}, {stop}]")
        z = self.num_slices
        return int(round(start * z)), int(round(stop * z))

    def slice_range(self, start: float = 0.0, stop: float = 1.0) -> "CTVolume":
        """The sub-volume between fractions ``start`` and ``stop`` of the z extent (a view, no copy)."""
        a, b = self.slice_bounds(start, stop)
        if a == b:
            raise UsageError(f"case {self.name}: slice range [{start}, {stop}] of {self.num_slices} slices is empty")
        name = self.name if (a, b) == (0, self.num_slices) else f"{self.name}[{a}:{b}]"
        return CTVolume(name, self.image[a:b], self.labels[a:b], self.spacing_zyx, self.first_slice + a, self.labeled)


def read_label_on_grid(label_path: Union[str, Path], image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """Read a label map and resample it onto ``image``'s grid in physical space (nearest neighbour).

    Returns:
        (labels as int64 array in the image's index order [z, y, x], boolean mask of the
        voxels the label file covers).

    Raises:
        KDSegError (InputImageError): unreadable / not 3D label file.
        ValueError: the label does not overlap the image in physical space, or holds
            non-integer values.
    """
    label = read_image(label_path)
    if label.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        values = sitk.GetArrayViewFromImage(label)
        if not np.array_equal(values, np.round(values)):
            raise UsageError(f"label map {label_path} holds non-integer values; give a label map, not an image")
    label = sitk.Cast(label, sitk.sitkInt32)
    # -1 marks image voxels outside the label's extent: unknown, not background.
    resampled = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, -1, sitk.sitkInt32)
    array = sitk.GetArrayFromImage(resampled).astype(np.int64)
    covered = array >= 0
    if not covered.any():
        raise UsageError(f"label map {label_path} does not overlap the image in physical space (origin "
                         f"{label.GetOrigin()} vs {image.GetOrigin()}); check that it belongs to this image")
    source_fg = int(np.count_nonzero(sitk.GetArrayViewFromImage(label)))
    if source_fg and not np.count_nonzero(array > 0):
        raise UsageError(f"label map {label_path}: none of its {source_fg} labelled voxels falls inside the image; "
                         "check that it belongs to this image")
    return np.where(covered, array, 0), covered


def load_ct_volume(image_path: Union[str, Path], label_path: Union[str, Path],
                   remap: Union[str, Mapping[int, int]] = "identity", unlabeled: Iterable[int] = (),
                   hu_window: Sequence[float] = DEFAULT_HU_WINDOW, name: Optional[str] = None,
                   ignore_index: int = IGNORE_INDEX) -> CTVolume:
    """Read an image/label pair; return it canonical, windowed and remapped to Synapse ids.

    Args:
        image_path: CT file (NIfTI, NRRD, MHA) or DICOM series folder, values in HU.
        label_path: label map covering the same physical space (any grid/orientation).
        remap: a name of ``REMAP_TABLES`` ("btcv", "totalsegmentator", "dcmqi",
            "identity") or a {source id: target id} mapping.
        unlabeled: target organs this dataset does not annotate (its background becomes
            ``ignore_index``).
        hu_window: HU clipping window (the model card's).
        name: case name (default: file or folder name without suffixes).

    Raises:
        KDSegError: unreadable, 2D/4D/RGB, NaN or constant image (from the Lib's checks).
        ValueError: bad remap, label not overlapping the image.
    """
    table = resolve_remap(remap)
    image = read_image(image_path)
    source_labels, covered = read_label_on_grid(label_path, image)
    hu_native = sitk.GetArrayViewFromImage(image)
    check_ct_intensities(np.asarray(hu_native), f"training image {image_path}")
    labels = remap_labels(source_labels, table, ignore_index, unlabeled)
    labels[~covered] = ignore_index
    label_img = sitk.GetImageFromArray(labels)
    label_img.CopyInformation(image)
    image_c = to_canonical(image)
    label_c = to_canonical(label_img)
    hu = sitk.GetArrayFromImage(image_c)
    spacing = tuple(float(s) for s in reversed(image_c.GetSpacing()))
    if name is None:
        name = Path(image_path).name.split(".")[0]
    return CTVolume(name, window_to_unit(hu, hu_window), sitk.GetArrayFromImage(label_c),
                    spacing)  # type: ignore[arg-type]
