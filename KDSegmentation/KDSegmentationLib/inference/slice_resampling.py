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
never holding all C maps at full resolution (benchmarks/segment_volume.py compares
it with resampling a C-component SimpleITK vector image).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["axis_weights", "resize_slices", "resize_channels", "argmax_resized"]


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


# Above this share of pixels whose four sources disagree, interpolating every class
# map (running maximum) is faster than interpolating pixel by pixel.
_DENSE_BOUNDARY_FRACTION = 0.2


def _argmax_running_max(logits: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Same result as :func:`argmax_resized`, one full-size class map at a time."""
    best = resize_slices(logits[:, 0], out_hw)
    labels = np.zeros(best.shape, dtype=np.uint8)
    for index in range(1, logits.shape[1]):
        candidate = resize_slices(logits[:, index], out_hw)
        better = candidate > best
        np.copyto(best, candidate, where=better)
        labels[better] = index
    return labels


def argmax_resized(logits: np.ndarray, out_hw: Sequence[int], out: Optional[np.ndarray] = None) -> np.ndarray:
    """Class index of the largest linearly resized score: ``resize_channels(logits, out_hw).argmax(1)``.

    A resized pixel's scores are a convex combination of its four source pixels'
    scores. Where one class wins at all four (ties going to the lower index, as with
    ``argmax``), it wins every convex combination too, so the answer is known without
    interpolating; only pixels whose four sources disagree, i.e. near class
    boundaries, are interpolated, with the same arithmetic as :func:`resize_slices`.
    This keeps full-resolution memory to a few uint8 maps and makes the step several
    times faster than resizing all ``C`` maps. (Only float rounding at a near-exact tie
    between two classes could make the two ways differ.)

    Args:
        logits: ``(N, C, h, w)`` scores (logits or probabilities), 1 <= C <= 256.
        out_hw: (out_h, out_w) of the result.
        out: optional ``(N, out_h, out_w)`` uint8 array to write into.

    Returns:
        ``(N, out_h, out_w)`` uint8 class indices.
    """
    if logits.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) logits, got shape {logits.shape}")
    n, classes, h, w = logits.shape
    if not 1 <= classes <= 256:
        raise ValueError(f"expected 1 to 256 classes, got {classes}")
    shape = (n, int(out_hw[0]), int(out_hw[1]))
    if out is not None and (out.shape != shape or out.dtype != np.uint8):
        raise ValueError(f"out must be uint8 of shape {shape}, got {out.dtype} {out.shape}")
    lo_y, hi_y, w_y = axis_weights(h, shape[1])
    lo_x, hi_x, w_x = axis_weights(w, shape[2])
    source = logits.argmax(axis=1).astype(np.uint8)  # (N, h, w)
    rows_lo, rows_hi = source[:, lo_y], source[:, hi_y]
    labels = rows_lo[:, :, lo_x]
    mixed = labels != rows_lo[:, :, hi_x]
    mixed |= labels != rows_hi[:, :, lo_x]
    mixed |= labels != rows_hi[:, :, hi_x]
    if np.count_nonzero(mixed) > _DENSE_BOUNDARY_FRACTION * mixed.size:
        # Boundaries everywhere (noise-like scores): a running maximum over whole class maps is cheaper.
        labels = _argmax_running_max(logits, shape[1:])
        if out is None:
            return labels
        out[...] = labels
        return out
    b, yy, xx = np.nonzero(mixed)
    if b.size:
        scores = np.ascontiguousarray(np.moveaxis(np.asarray(logits, dtype=np.float32), 1, -1))  # (N, h, w, C)
        y0, y1, fy = lo_y[yy], hi_y[yy], w_y[yy][:, None]
        x0, x1, fx = lo_x[xx], hi_x[xx], w_x[xx][:, None]
        # y first, then x: the same operations, in the same order, as resize_slices.
        left = scores[b, y0, x0]
        left += (scores[b, y1, x0] - left) * fy
        right = scores[b, y0, x1]
        right += (scores[b, y1, x1] - right) * fy
        left += (right - left) * fx
        labels[b, yy, xx] = left.argmax(axis=1)
    if out is None:
        return labels
    out[...] = labels
    return out
