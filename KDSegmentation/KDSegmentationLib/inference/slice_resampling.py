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


def _cell_corners(logits: np.ndarray, batch: np.ndarray, cell_y: np.ndarray, cell_x: np.ndarray,
                  below: np.ndarray, right: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Every class's scores at the four corners of cells ``(batch[m], cell_y[m], cell_x[m])``.

    Args:
        logits: (N, C, h, w) scores.
        batch, cell_y, cell_x: (M,) cell indices.
        below, right: (h,) and (w,) row below and column right of each (clamped at the edge).

    Returns:
        top left, bottom left, top right, bottom right: four (C, M) arrays of ``logits``' dtype (class
        by class, so that reductions over the classes run along whole rows of M cells).
    """
    n, classes, h, w = logits.shape
    flat = logits.reshape(-1)
    top_left = (np.arange(classes) * (h * w))[:, None] + ((batch * classes * h + cell_y) * w + cell_x)  # (C, M)
    down = ((below - np.arange(h)) * w)[cell_y]  # 0 on the last row
    across = (right - np.arange(w))[cell_x]  # 0 on the last column
    return (flat.take(top_left), flat.take(top_left + down), flat.take(top_left + across),
            flat.take(top_left + down + across))


# Rounding bound of the two linear blends, relative to the largest corner score of a cell:
# each blend is three float32 operations (error a few units of 2**-24 of that score);
# 2**-12 leaves a wide safety factor and still excludes all but 2 or 3 classes per cell.
_CONTENDER_MARGIN = 2.0 ** -12


def _contending_classes(corners: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell, the classes that can win one of its interpolated pixels, in ascending order.

    An interpolated score lies between the lowest and the highest of its four corner
    scores (up to rounding). A class whose highest corner score is below another class's
    lowest one by more than the rounding bound (``_CONTENDER_MARGIN`` of the cell's
    largest score) loses to it at every pixel of the cell, so it can be left out: the
    remaining classes, still in ascending order (ties go to the lower index, as with
    ``argmax``), give the same winner with the same float32 scores.

    Args:
        corners: four (C, M) float32 arrays, the scores at each cell's four corners.

    Returns:
        ``(classes, first, counts)``: the contenders of every cell, cell after cell, each
        cell's ascending (intp); (M,) where each cell's contenders start in ``classes``;
        (M,) how many there are (>= 1).
    """
    highest = np.maximum(np.maximum(corners[0], corners[1]), np.maximum(corners[2], corners[3]))
    lowest = np.minimum(np.minimum(corners[0], corners[1]), np.minimum(corners[2], corners[3]))
    scale = np.maximum(np.abs(highest).max(axis=0), np.abs(lowest).max(axis=0))  # (M,)
    contending = highest + scale * _CONTENDER_MARGIN >= lowest.max(axis=0)  # (C, M)
    counts = contending.sum(axis=0)
    classes = np.nonzero(contending.T)[1]  # cell by cell, ascending within a cell
    return classes, np.cumsum(counts) - counts, counts


def _pixel_runs(lo: np.ndarray, n_in: int) -> Tuple[np.ndarray, np.ndarray]:
    """For each input index i: the first output pixel whose lower tap is i, and how many there are."""
    counts = np.bincount(lo, minlength=n_in)
    return np.cumsum(counts) - counts, counts


def _interpolated_cell_labels(corners: Sequence[np.ndarray], contender: np.ndarray, fy: np.ndarray,
                              fx: np.ndarray) -> np.ndarray:
    """Winning class at each pixel of M cells, from K contending classes' corner scores.

    Each class's scores are blended along y, then x, with the float32 operations of
    :func:`resize_slices` (``a + (b - a) * f``; the sum is taken as ``(b - a) * f + a``,
    which rounds the same), class by class over flat pixel arrays: numpy's loops then run
    over all pixels instead of over K classes at a time.

    Args:
        corners: top left, bottom left, top right, bottom right: four (K, M) float32 scores.
        contender: (M, K) class of each contender, ascending (ties go to the lower class).
        fy: (M, n_rows) weight of the bottom corners at each pixel row of each cell.
        fx: (M, n_cols) weight of the right corners at each pixel column.

    Returns:
        (M, n_rows, n_cols) uint8 classes.
    """
    top_left, bottom_left, top_right, bottom_right = corners
    (m, contending), n_rows, n_cols = contender.shape, fy.shape[1], fx.shape[1]
    left = top_left[:, :, None] + (bottom_left - top_left)[:, :, None] * fy  # (K, M, n_rows)
    right = top_right[:, :, None] + (bottom_right - top_right)[:, :, None] * fy
    scores = np.repeat((right - left).reshape(contending, -1), n_cols, axis=1)  # (K, M * n_rows * n_cols)
    scores *= np.broadcast_to(fx[:, None, :], (m, n_rows, n_cols)).reshape(-1)
    scores += np.repeat(left.reshape(contending, -1), n_cols, axis=1)
    best = scores[0]
    labels = np.empty((m, n_rows * n_cols), dtype=np.uint8)
    labels[...] = contender[:, :1]
    for k in range(1, contending):
        better = (scores[k] > best).reshape(m, -1)
        np.copyto(best, scores[k], where=better.reshape(-1))
        np.copyto(labels, contender[:, k:k + 1].astype(np.uint8), where=better)
    return labels.reshape(m, n_rows, n_cols)


def _cell_pixels(runs: Tuple[np.ndarray, np.ndarray], cells: np.ndarray) -> np.ndarray:
    """(M, n) output pixels (along one axis) of each of ``cells`` (each with at least one pixel), n being the
    most any cell has; a cell with fewer pixels repeats its last one.

    Args:
        runs: from :func:`_pixel_runs`, per source index its first output pixel and count.
        cells: (M,) source indices (cell rows or columns).
    """
    first, count = runs
    steps = np.minimum(np.arange(int(count.max())), count[cells][:, None] - 1)
    return first[cells][:, None] + steps


def _spread(source: np.ndarray, lo_y: np.ndarray, lo_x: np.ndarray, out: np.ndarray) -> None:
    """``out[n, y, x] = source[n, lo_y[y], lo_x[x]]``, also fast when ``out`` is a flipped view.

    The pipeline writes through a view of the label map in the input's voxel order, which
    for most CTs runs backwards along the rows and/or columns. numpy's ``take`` writes
    straight into a C-contiguous ``out`` only (otherwise into a buffer copied back element
    by element, 5x the whole gather), so reversed axes are turned forwards on both sides.

    Args:
        source: (N, h, w) uint8 classes on the model grid.
        lo_y, lo_x: (out_h,) and (out_w,) source row and column of each output pixel.
        out: (N, out_h, out_w) uint8 array or view.
    """
    if out.strides[0] < 0:
        out, source = out[::-1], source[::-1]
    if out.strides[1] < 0:
        out, lo_y = out[:, ::-1], lo_y[::-1]
    if out.strides[2] < 0:
        out, lo_x = out[:, :, ::-1], lo_x[::-1]
    # mode="clip" (the indices are valid): no index-checking buffer either.
    np.take(np.take(source, lo_x, axis=2), lo_y, axis=1, out=out, mode="clip")


def _report_extents(extents, labels: np.ndarray, first_slice: int) -> None:
    """Exact boxes of a full-resolution batch (the dense path)."""
    extents.include_label_map(labels, first_slice)


def _report_cell_extents(extents, source: np.ndarray, first_slice: int, y_runs, x_runs) -> None:
    """Boxes of the full-resolution pixels each cell's lower corner label covers (a superset)."""
    (y_start, y_count), (x_start, x_count) = y_runs, x_runs
    for value in np.flatnonzero(np.bincount(source.ravel(), minlength=1)):
        mask = source == value
        slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
        plane = mask.any(axis=0)  # (h, w): rows and columns from it, two passes over the batch instead of three
        rows = np.flatnonzero(plane.any(axis=1) & (y_count > 0))
        cols = np.flatnonzero(plane.any(axis=0) & (x_count > 0))
        if rows.size and cols.size:
            extents.include_box(int(value), (first_slice + slices[0], y_start[rows[0]], x_start[cols[0]]),
                                (first_slice + slices[-1], y_start[rows[-1]] + y_count[rows[-1]] - 1,
                                 x_start[cols[-1]] + x_count[cols[-1]] - 1))


def _report_interpolated_extents(extents, won: np.ndarray, slices: np.ndarray, top: np.ndarray,
                                 bottom: np.ndarray, left: np.ndarray, right: np.ndarray) -> None:
    """Boxes of the whole cells in which each class won at least one interpolated pixel (a superset).

    Args:
        won: (M, C) whether class c won a pixel of cell m.
        slices: (M,) slice index of each cell in the map ``extents`` describes.
        top, bottom, left, right: (M,) first and last pixel row and column of each cell.
    """
    for value in np.flatnonzero(won.any(axis=0)).tolist():
        cells = won[:, value]
        z = slices[cells]
        extents.include_box(value, (z.min(), top[cells].min(), left[cells].min()),
                            (z.max(), bottom[cells].max(), right[cells].max()))


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
    for all its pixels, which rounds identically), and only for the classes that can
    win somewhere in the cell (:func:`_contending_classes`: mostly two of the C).
    Full-resolution memory stays a few uint8 maps. (Only float rounding at a near-exact
    tie between two classes could make this differ from resizing all ``C`` maps.)

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
    # rows first into a full-size temporary.
    _spread(source, lo_y, lo_x, out)
    if extents is not None:
        _report_cell_extents(extents, source, first_slice, y_runs, x_runs)
    mixed &= (y_runs[1] > 0)[:, None] & (x_runs[1] > 0)  # cells past the slice's edge have no pixel
    batch, cell_y, cell_x = np.nonzero(mixed)
    corners = _cell_corners(logits, batch, cell_y, cell_x, below, right)
    contenders, first_contender, counts = _contending_classes(corners)
    # Every cell is computed on as many pixel rows and columns as the largest cell has: a smaller cell's
    # extra rows and columns repeat its last one (the same pixel, computed and written twice alike), so
    # cells are grouped only by their number of contenders.
    rows = _cell_pixels(y_runs, cell_y)  # (M, n_rows) output rows of each cell
    cols = _cell_pixels(x_runs, cell_x)  # (M, n_cols)
    fy, fx = w_y[rows], w_x[cols]
    won = np.zeros((batch.size, classes), dtype=bool) if extents is not None else None
    for contending in np.flatnonzero(np.bincount(counts)).tolist():
        pick = np.flatnonzero(counts == contending)
        contender = contenders[first_contender[pick][:, None] + np.arange(contending)]  # (M, K) ascending
        labels = _interpolated_cell_labels([c[contender.T, pick] for c in corners], contender,
                                           fy[pick], fx[pick])  # (M, n_rows, n_cols)
        out[batch[pick][:, None, None], rows[pick][:, :, None], cols[pick][:, None, :]] = labels
        if won is not None:
            for k in range(contending):
                won[pick, contender[:, k]] = (labels == contender[:, k, None, None]).any(axis=(1, 2))
    if won is not None:
        _report_interpolated_extents(extents, won, batch + first_slice, rows[:, 0], rows[:, -1], cols[:, 0],
                                     cols[:, -1])
    return out
