"""Resizing stacks of axial slices between the image grid and the model grid.

Both directions map the slice's field of view edge to edge: output pixel ``j`` of an
``n_out``-pixel axis samples input position ``(j + 0.5) * n_in / n_out - 0.5`` (pixel
centres at integer positions), so a round trip does not shift anatomy by half a
pixel. Interpolation is linear, clamped at the border and without anti-aliasing:
exactly what SimpleITK's ``Resample`` does for this grid and what training feeds
the network (``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)``), so the model sees at inference the slices it learnt from.
The tests check both equalities on real CT.

Linear interpolation is separable, so each axis is one gather and one blend in
numpy. Bringing class maps back to e.g. 512 x 512 is the pipeline's hot path;
:func:`argmax_resized` does it exactly but interpolates only near class boundaries,
never holding all C maps at full resolution, and can report where each label landed
(:class:`~KDSegmentationLib.inference.label_extents.LabelExtents`) so that
post-processing never scans the whole volume.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["axis_weights", "resize_slices", "resize_channels", "argmax_resized", "argmax_interpolated"]


def axis_weights(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps for resizing one axis edge to edge.

    Args:
        n_in: input length (pixels).
        n_out: output length (pixels).

    Returns:
        ``(lo, hi, w)``: for each output pixel the two input indices and the weight of
        ``hi``; output = ``(1 - w) * x[lo] + w * x[hi]``.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"axis lengths must be >= 1, got n_in={n_in}, n_out={n_out}")
    position = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    position = np.clip(position, 0.0, n_in - 1)
    lo = np.floor(position).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (position - lo).astype(np.float32)


def _resize_axis(array: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    n_in = array.shape[axis]
    if n_in == n_out:
        return array
    lo, hi, w = axis_weights(n_in, n_out)
    shape = [1] * array.ndim
    shape[axis] = n_out
    out = np.take(array, lo, axis=axis)
    out += (np.take(array, hi, axis=axis) - out) * w.reshape(shape)
    return out


def resize_slices(slices: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Resize slices ``(..., H, W)`` to ``(..., out_h, out_w)`` (linear, edge-aligned).

    Args:
        slices: array whose last two axes are (y, x), any numeric dtype.
        out_hw: (out_h, out_w).

    Returns:
        float32 array; a new array even when the size does not change.
    """
    if slices.ndim < 2:
        raise ValueError(f"expected (..., H, W) slices, got shape {slices.shape}")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    source = np.asarray(slices, dtype=np.float32)
    out = _resize_axis(source, source.ndim - 2, out_h)
    out = _resize_axis(out, out.ndim - 1, out_w)
    return np.array(out, copy=True) if np.may_share_memory(out, slices) else out


def resize_channels(maps: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Resize per-class maps ``(N, C, h, w)`` to ``(N, C, out_h, out_w)`` float32 (linear, edge-aligned)."""
    if maps.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) maps, got shape {maps.shape}")
    return resize_slices(maps, out_hw)


# Above this share of model-grid cells whose four corners disagree, interpolating every
# class map (running maximum) is faster than interpolating boundary pixels one by one.
_DENSE_BOUNDARY_FRACTION = 0.2


def _class_argmax(scores: np.ndarray, axis: int) -> np.ndarray:
    """uint8 ``scores.argmax(axis)`` for finite scores (first maximum wins), as a running maximum.

    One pass per class over whole maps instead of numpy's strided reduction along ``axis``.
    """
    take = [slice(None)] * scores.ndim
    take[axis] = 0
    best = np.array(scores[tuple(take)], dtype=np.float32)
    index = np.zeros(best.shape, dtype=np.uint8)
    for value in range(1, scores.shape[axis]):
        take[axis] = value
        candidate = scores[tuple(take)]
        better = candidate > best
        np.copyto(best, candidate, where=better)
        index[better] = value
    return index


Taps = Tuple[np.ndarray, np.ndarray, np.ndarray]
"""Linear-interpolation taps of one axis: (lo, hi, w), output = (1 - w) * x[lo] + w * x[hi]."""


def _blend(array: np.ndarray, axis: int, taps: Taps) -> np.ndarray:
    """The float32 blend of :func:`resize_slices` along ``axis`` with the given taps."""
    lo, hi, w = taps
    shape = [1] * array.ndim
    shape[axis] = lo.size
    out = np.take(array, lo, axis=axis)
    out += (np.take(array, hi, axis=axis) - out) * w.reshape(shape)
    return out


def _argmax_running_max(logits: np.ndarray, rows: Taps, cols: Taps) -> np.ndarray:
    """Same result as :func:`argmax_interpolated`, one full-size class map at a time."""
    def interpolated(index: int) -> np.ndarray:
        return _blend(_blend(np.asarray(logits[:, index], dtype=np.float32), 1, rows), 2, cols)

    best = interpolated(0)
    labels = np.zeros(best.shape, dtype=np.uint8)
    for index in range(1, logits.shape[1]):
        candidate = interpolated(index)
        better = candidate > best
        np.copyto(best, candidate, where=better)
        labels[better] = index
    return labels


def _pixel_runs(lo: np.ndarray, n_in: int) -> Tuple[np.ndarray, np.ndarray]:
    """For each input index i: the first output pixel whose lower tap is i, and how many there are."""
    counts = np.bincount(lo, minlength=n_in)
    return np.cumsum(counts) - counts, counts


def _report_extents(extents, labels: np.ndarray, first_slice: int) -> None:
    """Exact boxes of a full-resolution batch (the dense path)."""
    extents.include_label_map(labels, first_slice)


def _report_cell_extents(extents, source: np.ndarray, first_slice: int, y_runs, x_runs) -> None:
    """Boxes of the full-resolution pixels each cell's lower corner label covers (a superset)."""
    (y_start, y_count), (x_start, x_count) = y_runs, x_runs
    for value in np.flatnonzero(np.bincount(source.ravel(), minlength=1)):
        mask = source == value
        slices = np.flatnonzero(mask.any(axis=(1, 2)))
        rows = np.flatnonzero(mask.any(axis=(0, 2)) & (y_count > 0))
        cols = np.flatnonzero(mask.any(axis=(0, 1)) & (x_count > 0))
        if rows.size and cols.size:
            extents.include_box(int(value), (first_slice + slices[0], y_start[rows[0]], x_start[cols[0]]),
                                (first_slice + slices[-1], y_start[rows[-1]] + y_count[rows[-1]] - 1,
                                 x_start[cols[-1]] + x_count[cols[-1]] - 1))


def _report_interpolated_extents(extents, labels: np.ndarray, slices: np.ndarray, rows: np.ndarray,
                                 cols: np.ndarray, classes: int) -> None:
    """Boxes of the whole cells in which each class won at least one interpolated pixel (a superset).

    Args:
        labels: (M, n_rows, n_cols) classes of the pixels of M cells.
        slices: (M,) slice index of each cell in the map ``extents`` describes.
        rows, cols: (M, n_rows) and (M, n_cols) pixel rows and columns of each cell.
        classes: number of classes C (labels < C).
    """
    won = np.zeros((labels.shape[0], classes), dtype=bool)  # (M, C): which classes won a pixel of each cell
    won[np.arange(labels.shape[0])[:, None], labels.reshape(labels.shape[0], -1)] = True
    for value in np.flatnonzero(won.any(axis=0)).tolist():
        cells = won[:, value]
        z, top, bottom = slices[cells], rows[cells, 0], rows[cells, -1]
        left, right = cols[cells, 0], cols[cells, -1]
        extents.include_box(value, (z.min(), top.min(), left.min()), (z.max(), bottom.max(), right.max()))


def argmax_resized(logits: np.ndarray, out_hw: Sequence[int], out: Optional[np.ndarray] = None,
                   extents=None, first_slice: int = 0) -> np.ndarray:
    """Class index of the largest linearly resized score: ``resize_channels(logits, out_hw).argmax(1)``.

    :func:`argmax_interpolated` with the edge-aligned taps of :func:`axis_weights`.

    Args:
        logits: ``(N, C, h, w)`` scores (logits or probabilities), 1 <= C <= 256.
        out_hw: (out_h, out_w) of the result.
        out, extents, first_slice: as for :func:`argmax_interpolated`.

    Returns:
        ``(N, out_h, out_w)`` uint8 class indices (``out`` when given).
    """
    if logits.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) logits, got shape {logits.shape}")
    return argmax_interpolated(logits, axis_weights(logits.shape[2], int(out_hw[0])),
                               axis_weights(logits.shape[3], int(out_hw[1])), out, extents, first_slice)


def argmax_interpolated(logits: np.ndarray, rows: Taps, cols: Taps, out: Optional[np.ndarray] = None,
                        extents=None, first_slice: int = 0) -> np.ndarray:
    """Class index of the largest linearly interpolated score at the taps' positions.

    Equals interpolating every class map with ``rows`` then ``cols`` (float32, y first, as
    :func:`resize_slices` does) and taking the argmax.

    A resized pixel's scores are a convex combination of its four source pixels'
    scores. Where one class wins at all four (ties going to the lower index, as with
    ``argmax``), it wins every convex combination too, so the answer is known without
    interpolating. The work is therefore organised by model-grid cell (the square
    between four neighbouring source pixels): the small argmax is spread to full size
    by an index gather, and only the pixels of cells whose four corners disagree, i.e.
    near class boundaries, are interpolated, with the same float32 operations in the
    same order as :func:`resize_slices` (a cell's corner differences are computed once
    for all its pixels, which rounds identically). Full-resolution memory stays a few
    uint8 maps. (Only float rounding at a near-exact tie between two classes could make
    this differ from resizing all ``C`` maps.)

    Args:
        logits: ``(N, C, h, w)`` scores (logits or probabilities), 1 <= C <= 256.
        rows, cols: (lo, hi, w) taps of the out_h output rows into the h source rows and of
            the out_w columns into the w source columns; ``hi = min(lo + 1, n - 1)`` and
            ``lo`` non-decreasing (as :func:`axis_weights` and ``model_grid.axis_taps`` give).
        out: optional ``(N, out_h, out_w)`` uint8 array (or view) to write into.
        extents: optional :class:`~KDSegmentationLib.inference.label_extents.LabelExtents`
            of the whole map; every written label's box grows to hold its pixels.
        first_slice: index of this batch's first slice in the map ``extents`` describes.

    Returns:
        ``(N, out_h, out_w)`` uint8 class indices (``out`` when given).
    """
    if logits.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) logits, got shape {logits.shape}")
    n, classes, h, w = logits.shape
    if not 1 <= classes <= 256:
        raise ValueError(f"expected 1 to 256 classes, got {classes}")
    (lo_y, hi_y, w_y), (lo_x, hi_x, w_x) = rows, cols
    for name, (lo, hi), size in (("rows", (lo_y, hi_y), h), ("cols", (lo_x, hi_x), w)):
        if lo.size == 0 or lo.min() < 0 or hi.max() >= size or np.any(np.diff(lo) < 0) or \
                not np.array_equal(hi, np.minimum(lo + 1, size - 1)):
            raise ValueError(f"{name} taps must read a {size}-pixel axis with non-decreasing lo and hi = lo + 1")
    shape = (n, lo_y.size, lo_x.size)
    if out is not None and (out.shape != shape or out.dtype != np.uint8):
        raise ValueError(f"out must be uint8 of shape {shape}, got {out.dtype} {out.shape}")
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    source = _class_argmax(logits, axis=1)  # (N, h, w)
    # A cell (i, k) has corners (i, k), (i + 1, k), (i, k + 1), (i + 1, k + 1), clamped at the edge
    # exactly as axis_weights clamps hi; output pixel (y, x) lies in cell (lo_y[y], lo_x[x]).
    below = np.minimum(np.arange(h) + 1, h - 1)
    right = np.minimum(np.arange(w) + 1, w - 1)
    down = source[:, below]
    mixed = source != down
    mixed |= source != source[:, :, right]
    mixed |= source != down[:, :, right]
    if np.count_nonzero(mixed) > _DENSE_BOUNDARY_FRACTION * mixed.size:
        # Boundaries everywhere (noise-like scores): a running maximum over whole class maps is cheaper.
        out[...] = _argmax_running_max(logits, rows, cols)
        if extents is not None:
            _report_extents(extents, out, first_slice)
        return out
    y_runs, x_runs = _pixel_runs(lo_y, h), _pixel_runs(lo_x, w)
    # Columns first (on the small map), then rows straight into ``out``: 5x less work than
    # rows first into a full-size temporary. mode="clip" (the indices are valid) writes
    # without numpy's intermediate buffer.
    np.take(np.take(source, lo_x, axis=2), lo_y, axis=1, out=out, mode="clip")
    if extents is not None:
        _report_cell_extents(extents, source, first_slice, y_runs, x_runs)
    batch, cell_y, cell_x = np.nonzero(mixed)
    pixels_y, pixels_x = y_runs[1][cell_y], x_runs[1][cell_x]
    # Cells with the same number of pixel rows and columns are interpolated together.
    groups = pixels_y.astype(np.int64) * (shape[2] + 1) + pixels_x
    ordered = np.sort(groups)  # distinct sizes without np.unique, which imports numpy.ma (slow start-up)
    for group in ordered[np.flatnonzero(np.diff(ordered, prepend=-1))]:
        n_rows, n_cols = divmod(int(group), shape[2] + 1)
        if n_rows == 0 or n_cols == 0:
            continue
        pick = groups == group
        b, i, k = batch[pick], cell_y[pick], cell_x[pick]
        rows = y_runs[0][i][:, None] + np.arange(n_rows)  # (M, n_rows) output rows of each cell
        cols = x_runs[0][k][:, None] + np.arange(n_cols)  # (M, n_cols)
        i1, k1 = hi_y[rows[:, 0]], hi_x[cols[:, 0]]
        top_left, bottom_left = logits[b, :, i, k], logits[b, :, i1, k]  # (M, C)
        top_right, bottom_right = logits[b, :, i, k1], logits[b, :, i1, k1]
        fy = w_y[rows][:, :, None]  # (M, n_rows, 1)
        fx = w_x[cols][:, None, :, None]  # (M, 1, n_cols, 1)
        # y first, then x: the same operations, in the same order, as resize_slices.
        left = top_left[:, None] + (bottom_left - top_left)[:, None] * fy  # (M, n_rows, C)
        right_ = top_right[:, None] + (bottom_right - top_right)[:, None] * fy
        scores = left[:, :, None] + (right_ - left)[:, :, None] * fx  # (M, n_rows, n_cols, C)
        labels = _class_argmax(scores, axis=3)
        out[b[:, None, None], rows[:, :, None], cols[:, None, :]] = labels
        if extents is not None:
            _report_interpolated_extents(extents, labels, b + first_slice, rows, cols, classes)
    return out
