"""Where the model's input pixels lie on an axial slice: resize mode and physical-size mode.

Two ways to put an ``(n_y, n_x)`` slice of pixel spacing ``(s_y, s_x)`` mm onto a model
grid of ``(S_y, S_x)`` pixels:

- **resize** (TransUNet; model cards without ``input.pixel_spacing_mm``): the slice's field
  of view is stretched edge to edge onto the grid, so an organ's size in model pixels
  depends on the scanner's field of view;
- **physical size** (``input.pixel_spacing_mm`` = p): the grid has p mm pixels and its
  centre is the slice's centre, so an organ has the same size in model pixels on every
  scanner; a field of view larger than ``S * p`` is centre-cropped, a smaller one padded
  with the window's low end (value 0 after ``window_to_unit``, i.e. air).

Both are one formula: model pixel ``j`` samples slice position (pixel centres at integers)

    x(j) = (j - (S - 1) / 2) * p / s + (n - 1) / 2,

with p = n * s / S in resize mode, which is ``(j + 0.5) * n / S - 0.5``: edge-aligned
resizing. Sampling is linear, clamped within half a pixel of the slice edge, ``fill``
outside it. Going back, slice pixel ``i`` reads the model's class scores at
``(i - (n - 1) / 2) * s / p + (S - 1) / 2``; slice pixels the grid does not cover are
background.

When a physical-size grid is coarser than the slice (e.g. 0.7 mm CT onto 3 mm pixels),
linear sampling alone would alias noise and thin structures; the slice is first blurred
with a Gaussian of sigma ``(p / s - 1) / 2`` pixels per axis (scikit-image's
anti-aliasing rule), the same in training and at inference.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .banded_operator import BandedOperator
from .preprocessing import clip_to_window

__all__ = ["AxisTaps", "ModelGrid", "axis_positions", "axis_taps", "sample_slices", "sample_labels",
           "antialias_slices", "argmax_sampled"]


def axis_positions(n_in: int, spacing_in: float, n_out: int, spacing_out: float) -> np.ndarray:
    """Input positions (pixel centres at integers) of the ``n_out`` output pixel centres, centres aligned.

    Args:
        n_in: input pixels along the axis.
        spacing_in: input pixel size (any unit, same as ``spacing_out``).
        n_out: output pixels.
        spacing_out: output pixel size.

    Returns:
        float64 array (n_out,).
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"axis lengths must be >= 1, got n_in={n_in}, n_out={n_out}")
    if not (spacing_in > 0 and spacing_out > 0):
        raise ValueError(f"pixel spacings must be positive, got {spacing_in} and {spacing_out}")
    return (np.arange(n_out, dtype=np.float64) - (n_out - 1) / 2.0) * (spacing_out / spacing_in) + (n_in - 1) / 2.0


@dataclass(frozen=True)
class AxisTaps:
    """Linear-interpolation taps along one axis: output = ``(1 - w) * x[lo] + w * x[hi]`` where ``inside``.

    Attributes:
        lo, hi: (n_out,) source indices.
        w: (n_out,) float32 weight of ``hi``.
        inside: (n_out,) bool, False where the position lies more than half a pixel outside the source.
        nearest: (n_out,) source index of the nearest pixel (label sampling).
    """

    lo: np.ndarray
    hi: np.ndarray
    w: np.ndarray
    inside: np.ndarray
    nearest: np.ndarray


def axis_taps(positions: np.ndarray, n_in: int) -> AxisTaps:
    """Taps reading ``positions`` (from :func:`axis_positions`) of an ``n_in``-pixel axis."""
    positions = np.asarray(positions, dtype=np.float64)
    inside = (positions >= -0.5) & (positions <= n_in - 0.5)
    clamped = np.clip(positions, 0.0, n_in - 1)
    lo = np.floor(clamped).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    nearest = np.clip(np.floor(positions + 0.5), 0, n_in - 1).astype(np.intp)
    return AxisTaps(lo, hi, (clamped - lo).astype(np.float32), inside, nearest)


def _blend_axis(array: np.ndarray, axis: int, taps: AxisTaps) -> np.ndarray:
    shape = [1] * array.ndim
    shape[axis] = taps.lo.size
    out = np.take(array, taps.lo, axis=axis)
    out += (np.take(array, taps.hi, axis=axis) - out) * taps.w.reshape(shape)
    return out


def sample_slices(slices: np.ndarray, taps_y: AxisTaps, taps_x: AxisTaps, fill: float = 0.0) -> np.ndarray:
    """Linear sampling of ``(..., H, W)`` slices at the taps' positions; ``fill`` outside. float32 result."""
    source = np.asarray(slices, dtype=np.float32)
    out = _blend_axis(source, source.ndim - 2, taps_y)
    out = _blend_axis(out, out.ndim - 1, taps_x)
    if np.may_share_memory(out, slices):
        out = np.array(out, copy=True)
    if not (taps_y.inside.all() and taps_x.inside.all()):
        outside = ~(taps_y.inside[:, None] & taps_x.inside[None, :])
        out[..., outside] = fill
    return out


def sample_labels(labels: np.ndarray, taps_y: AxisTaps, taps_x: AxisTaps, fill: int = 0) -> np.ndarray:
    """Nearest-neighbour sampling of ``(..., H, W)`` label maps; ``fill`` outside. Keeps the dtype."""
    out = np.take(np.take(labels, taps_y.nearest, axis=labels.ndim - 2), taps_x.nearest, axis=labels.ndim - 1)
    if not (taps_y.inside.all() and taps_x.inside.all()):
        outside = ~(taps_y.inside[:, None] & taps_x.inside[None, :])
        out[..., outside] = fill
    return out


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def _smooth_axis(array: np.ndarray, axis: int, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return array
    kernel = _gaussian_kernel(sigma)
    radius = kernel.size // 2
    pad = [(0, 0)] * array.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(array, pad, mode="edge")  # edge: the border does not darken
    n = array.shape[axis]
    out = np.zeros_like(array)
    for k, weight in enumerate(kernel):
        out += weight * np.take(padded, np.arange(k, k + n), axis=axis)
    return out


def antialias_slices(slices: np.ndarray, factor_yx: Sequence[float]) -> np.ndarray:
    """Gaussian blur of ``(..., H, W)`` slices before downsampling by ``factor_yx`` (sigma (f - 1) / 2 px).

    Axes with factor <= 1 (upsampling or same size) are left as they are; returns float32.
    """
    out = np.asarray(slices, dtype=np.float32)
    for axis, factor in zip((out.ndim - 2, out.ndim - 1), factor_yx):
        out = _smooth_axis(out, axis, (float(factor) - 1.0) / 2.0)
    return out


def argmax_sampled(logits: np.ndarray, taps_y: AxisTaps, taps_x: AxisTaps, out: Optional[np.ndarray] = None,
                   fill: int = 0, extents=None, first_slice: int = 0) -> np.ndarray:
    """Class of the largest linearly sampled score, ``sample_slices(logits, ...).argmax(1)``, ``fill`` outside.

    A sampled pixel's scores are a convex combination of its four source pixels' scores.
    Where one class wins at all four (ties going to the lower index, as with ``argmax``)
    it wins every convex combination too, so only pixels whose sources disagree (near
    class boundaries) are interpolated, with the arithmetic of :func:`sample_slices`
    (:func:`~KDSegmentationLib.inference.slice_resampling.argmax_interpolated`).

    Args:
        logits: (N, C, h, w) scores, 1 <= C <= 256.
        taps_y, taps_x: taps onto the output rows and columns (source length h and w).
        out: optional (N, out_h, out_w) uint8 array (or view) to write into.
        fill: class of output pixels outside the source (background).
        extents: optional ``LabelExtents`` of the whole map, grown to hold the written labels
            (boxes may be larger than needed where ``fill`` overwrote a label).
        first_slice: index of this batch's first slice in the map ``extents`` describes.

    Returns:
        (N, out_h, out_w) uint8 class indices (``out`` when given).
    """
    from .slice_resampling import argmax_interpolated

    if logits.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) logits, got shape {logits.shape}")
    h, w = logits.shape[2:]
    if int(taps_y.hi.max(initial=0)) >= h or int(taps_x.hi.max(initial=0)) >= w:
        raise ValueError(f"taps read beyond the {h}x{w} logits")
    labels = argmax_interpolated(logits, (taps_y.lo, taps_y.hi, taps_y.w), (taps_x.lo, taps_x.hi, taps_x.w), out,
                                 extents, first_slice)
    if not (taps_y.inside.all() and taps_x.inside.all()):
        labels[:, ~(taps_y.inside[:, None] & taps_x.inside[None, :])] = fill
    return labels


def _axis_matrix(taps: AxisTaps, n_in: int, sigma: float) -> np.ndarray:
    """Dense ``(n_out, n_in)`` float32 matrix of one axis: Gaussian blur (edge-clamped) then linear sampling.

    Output pixel j is ``(1 - w_j)`` times the blurred pixel ``lo_j`` plus ``w_j`` times the blurred
    pixel ``hi_j``, i.e. the kernel around ``lo_j`` and around ``hi_j`` (weights of source indices
    beyond an edge go to the edge pixel, as the blur pads); rows of output pixels outside the
    source are zero (the caller adds the fill). Summed in float64, rounded once.
    """
    kernel = _gaussian_kernel(sigma).astype(np.float64) if sigma > 0 else np.ones(1)
    offsets = np.arange(kernel.size) - kernel.size // 2
    weight = taps.w.astype(np.float64)[:, None]
    indices = np.concatenate([np.clip(taps.lo[:, None] + offsets, 0, n_in - 1),
                              np.clip(taps.hi[:, None] + offsets, 0, n_in - 1)], axis=1)
    weights = np.concatenate([(1.0 - weight) * kernel, weight * kernel], axis=1)
    weights[~taps.inside] = 0.0
    matrix = np.zeros((taps.lo.size, n_in), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(taps.lo.size), indices.shape[1]), indices.ravel()), weights.ravel())
    return matrix.astype(np.float32)


@dataclass(frozen=True)
class _InputOperators:
    """Taps and axis operators of :meth:`ModelGrid.to_model_fast` for one slice size, spacing and storage order.

    Attributes:
        taps_y, taps_x: the grid's input taps (where the fill goes).
        rows, cols: the operators along the rows (y) and columns (x) of the slices' storage: an axis
            stored backwards (a negative stride) is read forwards by the reversed operator.
        response: (S_y, S_x) float32 output for slices of ones (row sums times column sums: 1 where
            the grid lies inside the slice, up to rounding; 0 outside), read-only.
    """

    taps_y: AxisTaps
    taps_x: AxisTaps
    rows: BandedOperator
    cols: BandedOperator
    response: np.ndarray


@functools.lru_cache(maxsize=16)
def _input_operators(grid: "ModelGrid", h: int, w: int, sy: float, sx: float, flip_y: bool = False,
                     flip_x: bool = False) -> _InputOperators:
    """The operators of :meth:`ModelGrid.to_model_fast` for one slice size, spacing and storage order. Building
    them costs more than applying them to one slice, and every batch of a volume (and every slice the live
    preview segments) has the same size and spacing, so they are built once."""
    taps_y, taps_x = grid.input_taps((h, w), (sy, sx))
    sigma_y, sigma_x = 0.0, 0.0
    if grid.physical:
        p = float(grid.pixel_spacing_mm)  # type: ignore[arg-type]
        sigma_y, sigma_x = (p / sy - 1.0) / 2.0, (p / sx - 1.0) / 2.0
    # The columns are resampled second, on S_y rows; the rows first, on the columns the column operator reads.
    # Block sizes: the fastest of 4/6/8 rows x 8/16 columns on the benchmark CT (512 px at 0.6-0.7 mm -> 3 mm).
    cols = BandedOperator.from_matrix(_axis_matrix(taps_x, w, sigma_x), other_length=grid.height,
                                      max_block_rows=8)
    if flip_x:
        cols = cols.reversed_input()
    start, stop = cols.support
    rows = BandedOperator.from_matrix(_axis_matrix(taps_y, h, sigma_y), other_length=max(1, stop - start),
                                      max_block_rows=4)
    if flip_y:
        rows = rows.reversed_input()
    response = np.outer(rows.row_sums(), cols.row_sums()).astype(np.float32)
    response.flags.writeable = False
    return _InputOperators(taps_y, taps_x, rows, cols, response)


@dataclass(frozen=True)
class ModelGrid:
    """The model's input grid and how slices are put on it (see the module docstring).

    Args:
        height, width: model input size in pixels (S_y, S_x).
        pixel_spacing_mm: model pixel size in mm (physical-size mode), or None (resize mode).
    """

    height: int
    width: int
    pixel_spacing_mm: Optional[float] = None

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"model grid must be at least 1x1 pixels, got {self.height}x{self.width}")
        if self.pixel_spacing_mm is not None and not float(self.pixel_spacing_mm) > 0:
            raise ValueError(f"pixel_spacing_mm must be positive (mm per model pixel), got {self.pixel_spacing_mm}")

    @property
    def physical(self) -> bool:
        return self.pixel_spacing_mm is not None

    def model_spacing(self, slice_hw: Sequence[int], spacing_yx: Sequence[float]) -> Tuple[float, float]:
        """Model pixel size (mm) for a slice: ``pixel_spacing_mm``, or the field of view over the grid (resize)."""
        if self.physical:
            return float(self.pixel_spacing_mm), float(self.pixel_spacing_mm)  # type: ignore[arg-type]
        return (slice_hw[0] * float(spacing_yx[0]) / self.height, slice_hw[1] * float(spacing_yx[1]) / self.width)

    def _check(self, slice_hw: Sequence[int], spacing_yx: Sequence[float]) -> Tuple[int, int, float, float]:
        h, w = int(slice_hw[0]), int(slice_hw[1])
        sy, sx = float(spacing_yx[0]), float(spacing_yx[1])
        if h < 1 or w < 1:
            raise ValueError(f"slice must be at least 1x1 pixels, got {h}x{w}")
        if not (sy > 0 and sx > 0):
            raise ValueError(f"slice pixel spacing must be positive, got {tuple(spacing_yx)} mm")
        return h, w, sy, sx

    def input_taps(self, slice_hw: Sequence[int], spacing_yx: Sequence[float],
                   size_hw: Optional[Sequence[int]] = None) -> Tuple[AxisTaps, AxisTaps]:
        """Taps reading the slice at the model pixels (``size_hw`` overrides the grid size: a larger canvas
        centred on the same point, used by training augmentation)."""
        h, w, sy, sx = self._check(slice_hw, spacing_yx)
        py, px = self.model_spacing((h, w), (sy, sx))
        out_h, out_w = (self.height, self.width) if size_hw is None else (int(size_hw[0]), int(size_hw[1]))
        return (axis_taps(axis_positions(h, sy, out_h, py), h), axis_taps(axis_positions(w, sx, out_w, px), w))

    def output_taps(self, slice_hw: Sequence[int], spacing_yx: Sequence[float]) -> Tuple[AxisTaps, AxisTaps]:
        """Taps reading the model's (S_y, S_x) score maps at every slice pixel."""
        h, w, sy, sx = self._check(slice_hw, spacing_yx)
        py, px = self.model_spacing((h, w), (sy, sx))
        return (axis_taps(axis_positions(self.height, py, h, sy), self.height),
                axis_taps(axis_positions(self.width, px, w, sx), self.width))

    def antialias(self, slices: np.ndarray, spacing_yx: Sequence[float]) -> np.ndarray:
        """The anti-aliasing blur of physical-size mode (none in resize mode, as TransUNet)."""
        if not self.physical:
            return np.asarray(slices, dtype=np.float32)
        p = float(self.pixel_spacing_mm)  # type: ignore[arg-type]
        return antialias_slices(slices, (p / float(spacing_yx[0]), p / float(spacing_yx[1])))

    def to_model(self, slices: np.ndarray, spacing_yx: Sequence[float], size_hw: Optional[Sequence[int]] = None,
                 fill: float = 0.0) -> np.ndarray:
        """``(..., H, W)`` windowed slices -> ``(..., S_y, S_x)`` float32 model input.

        Args:
            slices: values in [0, 1] (``window_to_unit``).
            spacing_yx: slice pixel size (row, column) in mm.
            size_hw: output size other than the grid's (a centred canvas), or None.
            fill: value outside the slice (0: below the window, like air).
        """
        taps_y, taps_x = self.input_taps(slices.shape[-2:], spacing_yx, size_hw)
        return sample_slices(self.antialias(slices, spacing_yx), taps_y, taps_x, fill)

    def to_model_fast(self, slices: np.ndarray, spacing_yx: Sequence[float], fill: float = 0.0) -> np.ndarray:
        """:meth:`to_model` on the grid as one banded operator per axis.

        Blur and linear sampling are linear along each axis, so each axis is one banded
        matrix (:func:`_axis_matrix`), applied as a few small dense products over the input
        rows each block of output rows reads (:class:`BandedOperator`): a batch costs two
        products per block instead of a pass over the full slices per kernel tap and axis.
        Only the part of the slices the grid reads is touched; an axis stored backwards (a
        flipped view) is read in storage order by the reversed operator. The values equal
        :meth:`to_model`'s up to float32 rounding (the tests bound the difference on real
        CT); the pipeline uses this (through :meth:`hu_to_model`), training the reference
        :meth:`to_model`.

        Args:
            slices: (..., H, W) values in [0, 1] (``window_to_unit``).
            spacing_yx: slice pixel size (row, column) in mm.
            fill: value outside the slice.

        Returns:
            (..., S_y, S_x) float32.
        """
        return self._resample_fast(slices, spacing_yx, fill, hu_window=None)

    def hu_to_model(self, hu_slices: np.ndarray, spacing_yx: Sequence[float], hu_window: Sequence[float],
                    fill: float = 0.0) -> np.ndarray:
        """``to_model_fast(window_to_unit(hu_slices, hu_window), spacing_yx, fill)`` up to float32 rounding, with
        one pass over the pixels the grid reads.

        The window is a clip followed by a shift and a scale; the shift and scale are linear,
        so they are applied to the small result instead of every pixel read: the operators
        run on the clipped HU (:func:`~.preprocessing.clip_to_window`), then ``low`` times the
        operators' response to ones is subtracted and the difference divided by ``high - low``
        (values differ from :meth:`to_model`'s by about 1e-7; the tests bound it on real CT).
        An axis stored backwards (a flipped view, e.g. a NIfTI's columns seen in LPS order) is
        read in storage order by the reversed operator.

        Args:
            hu_slices: (..., H, W) Hounsfield units, any real dtype and strides (e.g. the pipeline's
                canonical view of the input's voxels).
            spacing_yx: slice pixel size (row, column) in mm.
            hu_window: (low, high) HU window of the model card.
            fill: value outside the slice.

        Returns:
            (..., S_y, S_x) float32 in [0, 1].
        """
        return self._resample_fast(hu_slices, spacing_yx, fill, hu_window=hu_window)

    def _resample_fast(self, slices: np.ndarray, spacing_yx: Sequence[float], fill: float,
                       hu_window: Optional[Sequence[float]]) -> np.ndarray:
        source = np.asarray(slices)
        if source.ndim < 2:
            raise ValueError(f"expected (..., H, W) slices, got shape {source.shape}")
        h, w, sy, sx = self._check(source.shape[-2:], spacing_yx)
        planes = source.reshape((-1, h, w))
        flip_y, flip_x = planes.strides[1] < 0, planes.strides[2] < 0
        planes = planes[:, ::-1 if flip_y else 1, ::-1 if flip_x else 1]  # storage order: contiguous reads
        operators = _input_operators(self, h, w, sy, sx, flip_y, flip_x)
        (y0, y1), (x0, x1) = operators.rows.support, operators.cols.support
        read = planes[:, y0:y1, x0:x1]
        if hu_window is not None:
            values = np.empty(read.shape, dtype=np.float32)
            for hu_slice, clipped in zip(read, values):  # slice by slice: the clipped slice is still in cache
                clip_to_window(hu_slice, hu_window, out=clipped)
        else:
            values = read.astype(np.float32, copy=False)
        along_rows = operators.rows.apply(values, axis=1, first_input=y0)
        out = operators.cols.apply(along_rows, axis=2, first_input=x0)
        if hu_window is not None:
            low, high = float(hu_window[0]), float(hu_window[1])
            out -= low * operators.response
            out /= high - low
            np.clip(out, 0.0, 1.0, out=out)  # rounding can leave air at -1e-8
        taps_y, taps_x = operators.taps_y, operators.taps_x
        if fill != 0.0 and not (taps_y.inside.all() and taps_x.inside.all()):
            out[..., ~(taps_y.inside[:, None] & taps_x.inside[None, :])] = fill
        return out.reshape(source.shape[:-2] + out.shape[1:])

    def labels_to_model(self, labels: np.ndarray, spacing_yx: Sequence[float],
                        size_hw: Optional[Sequence[int]] = None, fill: int = 0) -> np.ndarray:
        """``(..., H, W)`` label maps at the model pixels (nearest neighbour; ``fill`` outside the slice)."""
        taps_y, taps_x = self.input_taps(labels.shape[-2:], spacing_yx, size_hw)
        return sample_labels(labels, taps_y, taps_x, fill)

    def argmax_to_slice(self, logits: np.ndarray, slice_hw: Sequence[int], spacing_yx: Sequence[float],
                        out: Optional[np.ndarray] = None, extents=None, first_slice: int = 0) -> np.ndarray:
        """(N, C, S_y, S_x) scores -> (N, H, W) uint8 classes on the slice grid (background outside the grid).

        ``extents``/``first_slice``: as for :func:`argmax_sampled` (label boxes of the whole map).
        """
        taps_y, taps_x = self.output_taps(slice_hw, spacing_yx)
        return argmax_sampled(logits, taps_y, taps_x, out, extents=extents, first_slice=first_slice)
