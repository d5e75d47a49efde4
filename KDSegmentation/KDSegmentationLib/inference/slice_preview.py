"""Segment one axial slice of a CT, exactly as the full pipeline segments that slice.

The live preview in Slicer segments the slice under view each time the user scrolls.
A volume is prepared once (:class:`PreviewVolume`: reoriented to the canonical LPS
grid, as :func:`segment_image` does); each preview then costs one model call on one
slice through :func:`classify_slices`, the very function the full pipeline runs per
batch, followed by the same structure subset, and is laid out back on the input's own
grid as :func:`from_canonical` lays out the full result. So the preview of a slice
equals that slice of the full result before its 3D post-processing (largest component
and hole filling need the whole volume and are not previewed), voxel for voxel.

The ONNX Runtime session lives in the :class:`SlicePreviewer` and stays warm between
slices. Nothing here touches Slicer; the module runs it on a worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

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
        input_ijk_to_ras: 4x4 IJK-to-RAS of the input's own grid (parent transforms excluded).

    Attributes:
        hu: (Z, Y, X) read-only view of the canonical voxels (HU); ``hu[z]`` is what
            the model sees as axial slice ``z``.
        ijk_to_ras: 4x4 matrix from canonical index (x, y, z) to RAS (parent transforms excluded).
        canonical_to_input: 4x4 integer matrix from canonical (x, y, z, 1) to the input's
            (i, j, k, 1): a signed permutation plus a shift.

    Raises:
        ValueError: ``image`` is not the input's voxels permuted and flipped (grids disagree).
    """

    image: sitk.Image
    input_ijk_to_ras: np.ndarray
    hu: np.ndarray = field(init=False, repr=False)
    ijk_to_ras: np.ndarray = field(init=False, repr=False)
    canonical_to_input: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        canonical_ijk_to_ras = ijk_to_ras_from_image(self.image)
        mapping = np.linalg.solve(np.asarray(self.input_ijk_to_ras, dtype=float), canonical_ijk_to_ras)
        exact = np.round(mapping)
        # Reorientation moves whole voxels: any fractional part means the two grids are not the same voxels.
        if not np.allclose(mapping, exact, atol=1e-3) or abs(round(np.linalg.det(exact[:3, :3]))) != 1:
            raise ValueError("the canonical image is not the input's voxel grid permuted and flipped")
        object.__setattr__(self, "hu", sitk.GetArrayViewFromImage(self.image))
        object.__setattr__(self, "ijk_to_ras", canonical_ijk_to_ras)
        object.__setattr__(self, "canonical_to_input", exact.astype(np.int64))

    @classmethod
    def from_image(cls, image: sitk.Image) -> "PreviewVolume":
        """Reorient a 3D CT (any orientation) to the grid the pipeline segments.

        Raises:
            InputImageError: not a 3D single-component image.
        """
        check_volume_shape(image, "The input")
        return cls(to_canonical(image), ijk_to_ras_from_image(image))

    @classmethod
    def from_kji_array(cls, array_kji: np.ndarray, ijk_to_ras: np.ndarray) -> "PreviewVolume":
        """From a Slicer volume's (K, J, I) array and IJK-to-RAS matrix (see :func:`image_from_kji_array`)."""
        return cls.from_image(image_from_kji_array(array_kji, ijk_to_ras))

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(Z, Y, X) of the canonical array."""
        return tuple(self.hu.shape)

    def to_input_grid(self, slice_yx: np.ndarray, index: int) -> Tuple[np.ndarray, np.ndarray, int, int]:
        """Canonical slice ``index``'s values laid out on the input's own grid, as a one-slice volume.

        The permutation and flips that :func:`from_canonical` applies to the whole label
        map, applied to one slice: the result equals that slice of the full result voxel for
        voxel, in the input's voxel order, whichever input axis is the axial one.

        Args:
            slice_yx: (Y, X) values on canonical slice ``index``.
            index: canonical axial slice index.

        Returns:
            ``(array_kji, ijk_to_ras, input_axis, input_index)``: the one-slice (K, J, I) array
            (length 1 along the input's axial array axis ``input_axis``, 0 for K, 1 for J,
            2 for I), its 4x4 IJK-to-RAS (the input's, shifted to that slice), and the slice's
            index along that input axis.
        """
        mapping = self.canonical_to_input
        height, width = slice_yx.shape
        axes, flipped = [], []
        for array_axis in range(3):  # input array axis 0 = K, 1 = J, 2 = I
            row = 2 - array_axis  # its component in (i, j, k)
            column = int(np.flatnonzero(mapping[row, :3])[0])  # the canonical component (x, y, z) it comes from
            axes.append(2 - column)  # canonical array axis (z, y, x) of that component
            flipped.append(mapping[row, column] < 0)
        values = np.transpose(np.asarray(slice_yx)[None], axes)
        values = np.ascontiguousarray(np.flip(values, axis=[a for a in range(3) if flipped[a]]))
        corners = np.array([[x, y, index, 1] for x in (0, width - 1) for y in (0, height - 1)]).T
        start = (mapping @ corners)[:3].min(axis=1)  # input (i, j, k) of values[0, 0, 0]
        shift = np.eye(4)
        shift[:3, 3] = start
        axial_row = int(np.flatnonzero(mapping[:3, 2])[0])
        return values, np.asarray(self.input_ijk_to_ras, dtype=float) @ shift, 2 - axial_row, int(start[axial_row])


@dataclass(frozen=True)
class SlicePreview:
    """One segmented axial slice on the input's grid, ready to be shown as a one-slice label volume.

    Args:
        index: canonical axial slice index ``z`` (0 = most inferior).
        labels: uint8 class indices (0 background, then the model's labels) as the (K, J, I)
            array of a one-slice volume on the input's grid: length 1 along ``input_axis``.
        ijk_to_ras: that volume's 4x4 IJK-to-RAS (the input's, shifted; parent transforms excluded).
        input_axis: the input's array axis that is axial (0 for K, the usual case).
        input_index: the slice's index along that axis of the input.
        timings: seconds of "preprocess", "infer" and "postprocess" (class maps back to
            the slice grid, the structure subset and the layout on the input grid).
    """

    index: int
    labels: np.ndarray
    ijk_to_ras: np.ndarray
    input_axis: int
    input_index: int
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
        # The subset is a no-op when every structure is kept; skipping it saves a full-slice pass per preview.
        self._keep_all = set(self._keep) == {label.index for label in segmenter.card.foreground_labels()}

    def segment_slice(self, volume: PreviewVolume, index: int) -> SlicePreview:
        """Segment canonical axial slice ``index`` of ``volume``.

        Args:
            volume: the prepared CT.
            index: 0 <= index < Z.

        Returns:
            The slice's class indices on the input's grid and their geometry.

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
        if not self._keep_all:
            keep_structures(labels, self._keep)
        on_input, ijk_to_ras, input_axis, input_index = volume.to_input_grid(labels[0], index)
        timings["postprocess"] += time.perf_counter() - start
        return SlicePreview(index, on_input, ijk_to_ras, input_axis, input_index, timings)
