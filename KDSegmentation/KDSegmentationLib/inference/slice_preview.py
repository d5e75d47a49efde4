"""Segment one axial slice of a CT, exactly as the full pipeline segments that slice.

The live preview in Slicer segments the slice under view each time the user scrolls.
A volume is prepared once (:class:`PreviewVolume`: seen on the canonical LPS grid
through the pipeline's own view, :class:`CanonicalAxes`); each preview then costs one model call on one
slice through :func:`classify_slices`, the very function the full pipeline runs per
batch, followed by the same structure subset, and is written back onto the input's own
grid through the same view as the full result. So the preview of a slice
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
from ..imaging.orientation import CanonicalAxes
from .pipeline import Segmenter, classify_slices, structure_label_values
from .postprocessing import keep_structures
from ..imaging.slicer_geometry import ijk_to_ras_from_image, image_from_kji_array

__all__ = ["PreviewVolume", "SlicePreview", "SlicePreviewer"]


@dataclass(frozen=True)
class PreviewVolume:
    """A CT prepared once for many slice previews: the pipeline's canonical view of its voxels.

    Args:
        image: the CT in any orientation. Its voxels are seen on the canonical (LPS) grid
            through :class:`CanonicalAxes`, as :func:`segment_image` sees them: no copy, no
            interpolation.

    Attributes:
        hu: (Z, Y, X) read-only canonical view of the voxels (HU); ``hu[z]`` is what the
            model sees as axial slice ``z``.
        ijk_to_ras: 4x4 matrix from canonical index (x, y, z) to RAS (parent transforms excluded).
        input_ijk_to_ras: 4x4 IJK-to-RAS of the input's own grid.
    """

    image: sitk.Image
    hu: np.ndarray = field(init=False, repr=False)
    ijk_to_ras: np.ndarray = field(init=False, repr=False)
    input_ijk_to_ras: np.ndarray = field(init=False, repr=False)
    _axes: CanonicalAxes = field(init=False, repr=False)
    _voxels: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        axes = CanonicalAxes(self.image)
        voxels = sitk.GetArrayViewFromImage(self.image)  # the input's own (k, j, i) array
        input_ijk_to_ras = ijk_to_ras_from_image(self.image)
        # Canonical index (x, y, z) -> input index (i, j, k): the same permutation and flips as the view.
        canonical_to_input = np.zeros((4, 4))
        canonical_to_input[3, 3] = 1.0
        for canonical_axis in range(3):  # numpy axes (z, y, x)
            input_axis = axes.permutation[canonical_axis]
            row, column = 2 - input_axis, 2 - canonical_axis  # index components (i, j, k) / (x, y, z)
            if canonical_axis in axes.flipped:
                canonical_to_input[row, column] = -1.0
                canonical_to_input[row, 3] = voxels.shape[input_axis] - 1
            else:
                canonical_to_input[row, column] = 1.0
        for name, value in (("_axes", axes), ("_voxels", voxels), ("hu", axes.view(voxels)),
                            ("input_ijk_to_ras", input_ijk_to_ras),
                            ("ijk_to_ras", input_ijk_to_ras @ canonical_to_input)):
            object.__setattr__(self, name, value)

    @classmethod
    def from_image(cls, image: sitk.Image) -> "PreviewVolume":
        """Prepare a 3D CT (any orientation).

        Raises:
            InputImageError: not a 3D single-component image.
        """
        check_volume_shape(image, "The input")
        return cls(image)

    @classmethod
    def from_kji_array(cls, array_kji: np.ndarray, ijk_to_ras: np.ndarray) -> "PreviewVolume":
        """From a Slicer volume's (K, J, I) array and IJK-to-RAS matrix (see :func:`image_from_kji_array`)."""
        return cls.from_image(image_from_kji_array(array_kji, ijk_to_ras))

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(Z, Y, X) of the canonical view."""
        return tuple(self.hu.shape)

    @property
    def spacing_yx(self) -> Tuple[float, float]:
        """In-plane voxel size (row, column) of the canonical slices in mm, as :func:`segment_image` passes it."""
        return (self._axes.spacing[1], self._axes.spacing[0])

    def to_input_grid(self, slice_yx: np.ndarray, index: int) -> Tuple[np.ndarray, np.ndarray, int, int]:
        """Canonical slice ``index``'s values laid out on the input's own grid, as a one-slice volume.

        Written through the same canonical view as :func:`segment_image` writes its label
        map, so the result equals that slice of the full result voxel for voxel, in the
        input's voxel order, whichever input axis is the axial one.

        Args:
            slice_yx: (Y, X) values on canonical slice ``index``.
            index: canonical axial slice index.

        Returns:
            ``(array_kji, ijk_to_ras, input_axis, input_index)``: the one-slice (K, J, I) array
            (length 1 along the input's axial array axis ``input_axis``: 0 for K, 1 for J,
            2 for I), its 4x4 IJK-to-RAS (the input's, shifted to that slice), and the slice's
            index along that input axis.
        """
        input_axis = self._axes.permutation[0]
        shape = list(self._voxels.shape)
        shape[input_axis] = 1
        values = np.zeros(shape, dtype=np.asarray(slice_yx).dtype)
        self._axes.view(values)[0] = slice_yx
        flipped = 0 in self._axes.flipped
        input_index = self._voxels.shape[input_axis] - 1 - index if flipped else index
        shift = np.eye(4)
        shift[2 - input_axis, 3] = input_index
        return values, self.input_ijk_to_ras @ shift, input_axis, int(input_index)


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
        labels = classify_slices(volume.hu[index:index + 1], self.segmenter, timings=timings,
                                 spacing_yx=volume.spacing_yx)
        start = time.perf_counter()
        if not self._keep_all:
            keep_structures(labels, self._keep)
        on_input, ijk_to_ras, input_axis, input_index = volume.to_input_grid(labels[0], index)
        timings["postprocess"] += time.perf_counter() - start
        return SlicePreview(index, on_input, ijk_to_ras, input_axis, input_index, timings)
