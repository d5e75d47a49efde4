"""Segment one axial slice of a CT, exactly as the full pipeline segments that slice.

The live preview in Slicer segments the slice under view each time the user scrolls.
A volume is prepared once (:class:`PreviewVolume`: reoriented to the canonical LPS
grid, as :func:`segment_image` does); each preview then costs one model call on one
slice through :func:`classify_slices`, the very function the full pipeline runs per
batch, followed by the same structure subset. So the preview of slice ``z`` equals
slice ``z`` of the full result before its 3D post-processing (largest component and
hole filling need the whole volume and are not previewed).

The ONNX Runtime session lives in the :class:`SlicePreviewer` and stays warm between
slices. Nothing here touches Slicer; the module runs it on a worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..imaging.image_files import check_volume_shape
from ..imaging.orientation import to_canonical
from .pipeline import Segmenter, classify_slices, structure_label_values
from .postprocessing import keep_structures
from ..imaging.slicer_geometry import ijk_to_ras_from_image, image_from_kji_array

__all__ = ["PreviewVolume", "SlicePreview", "SlicePreviewer"]


@dataclass(frozen=True)
class PreviewVolume:
    """A CT prepared once for many slice previews.

    Args:
        image: the CT on the canonical LPS grid (see :func:`to_canonical`); its voxels
            are the input's, permuted and flipped, never interpolated.

    Attributes:
        hu: (Z, Y, X) read-only view of the canonical voxels (HU); ``hu[z]`` is what
            the model sees as axial slice ``z``.
        ijk_to_ras: 4x4 matrix from canonical index (x, y, z) to RAS (parent transforms excluded).
    """

    image: sitk.Image
    hu: np.ndarray = field(init=False, repr=False)
    ijk_to_ras: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hu", sitk.GetArrayViewFromImage(self.image))
        object.__setattr__(self, "ijk_to_ras", ijk_to_ras_from_image(self.image))

    @classmethod
    def from_image(cls, image: sitk.Image) -> "PreviewVolume":
        """Reorient a 3D CT (any orientation) to the grid the pipeline segments.

        Raises:
            InputImageError: not a 3D single-component image.
        """
        check_volume_shape(image, "The input")
        return cls(to_canonical(image))

    @classmethod
    def from_kji_array(cls, array_kji: np.ndarray, ijk_to_ras: np.ndarray) -> "PreviewVolume":
        """From a Slicer volume's (K, J, I) array and IJK-to-RAS matrix (see :func:`image_from_kji_array`)."""
        return cls.from_image(image_from_kji_array(array_kji, ijk_to_ras))

    @property
    def shape(self):
        """(Z, Y, X) of the canonical array."""
        return self.hu.shape

    def slice_ijk_to_ras(self, index: int) -> np.ndarray:
        """4x4 IJK-to-RAS of a one-slice volume holding canonical slice ``index``: its voxels sit
        exactly on the input's voxels of that slice."""
        shift = np.eye(4)
        shift[2, 3] = index
        return self.ijk_to_ras @ shift


@dataclass(frozen=True)
class SlicePreview:
    """One segmented axial slice, ready to be shown as a one-slice label volume.

    Args:
        index: canonical axial slice index ``z``.
        labels: (1, Y, X) uint8 class indices (0 background, then the model's labels),
            laid out as a Slicer (K, J, I) array of a one-slice volume.
        ijk_to_ras: that volume's 4x4 IJK-to-RAS (parent transforms excluded).
        timings: seconds of "preprocess", "infer" and "postprocess" (class maps back to
            the slice grid and the structure subset).
    """

    index: int
    labels: np.ndarray
    ijk_to_ras: np.ndarray
    timings: Dict[str, float]


class SlicePreviewer:
    """Segments single axial slices with one warm model session.

    Args:
        segmenter: the model and its engine, created once (e.g. :meth:`Segmenter.from_registry`).
        structures: names of the structures to show (None: all), as for
            :class:`SegmentationOptions`.

    Raises:
        ModelNotFoundError: an unknown structure name.
    """

    def __init__(self, segmenter: Segmenter, structures: Optional[Sequence[str]] = None) -> None:
        self.segmenter = segmenter
        self._keep = structure_label_values(segmenter.card, structures)

    def segment_slice(self, volume: PreviewVolume, index: int) -> SlicePreview:
        """Segment canonical axial slice ``index`` of ``volume``.

        Args:
            volume: the prepared CT.
            index: 0 <= index < Z.

        Returns:
            The slice's class indices on the input's voxels and their geometry.

        Raises:
            ValueError: ``index`` outside the volume.
            RegistryError: the model's output does not match its card.
        """
        depth = volume.shape[0]
        if isinstance(index, bool) or int(index) != index or not 0 <= index < depth:
            raise ValueError(f"slice index must be a whole number in [0, {depth - 1}], got {index!r}")
        index = int(index)
        timings = {"preprocess": 0.0, "infer": 0.0, "postprocess": 0.0}
        labels = classify_slices(volume.hu[index:index + 1], self.segmenter, timings=timings)
        start = time.perf_counter()
        keep_structures(labels, self._keep)
        timings["postprocess"] += time.perf_counter() - start
        return SlicePreview(index, labels, volume.slice_ijk_to_ras(index), timings)
