"""window_to_unit: the HU window every model input goes through, bit for bit the same on every path."""

import numpy as np
import pytest

from KDSegmentationLib.inference.preprocessing import clip_to_window, window_to_unit


def float_formula(hu, window):
    """The definition, step by step in float32: convert, clip, subtract low, divide by the width."""
    low, high = float(window[0]), float(window[1])
    out = np.clip(np.asarray(hu).astype(np.float32), np.float32(low), np.float32(high))
    return (out - np.float32(low)) / np.float32(high - low)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint16, np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("window", [(-125, 275), (-160.0, 240.0), (-125.5, 275.25), (0, 80)])
def test_every_dtype_and_storage_order_gives_the_float_formula_bit_for_bit(dtype, window):
    rng = np.random.default_rng(7)
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        hu = rng.integers(max(limits.min, -3024), min(limits.max, 3071) + 1, size=(3, 17, 23)).astype(dtype)
        hu[0, 0, :4] = [limits.min, limits.max, max(limits.min, -125), min(limits.max, 275)]
    else:
        hu = rng.normal(0, 400, size=(3, 17, 23)).astype(dtype)
        hu[0, 0, :3] = [-125.0, 275.0, 1e9]
    for view in (hu, hu[:, ::-1, ::-1], hu[:, :, 3:19:2], np.swapaxes(hu, 1, 2)):
        before = view.copy()
        expected = float_formula(view, window)
        got = window_to_unit(view, window)
        assert got.dtype == np.float32 and got.shape == view.shape
        np.testing.assert_array_equal(got, expected)
        out = np.full(view.shape, np.nan, np.float32)
        assert window_to_unit(view, window, out=out) is out
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(clip_to_window(view, window),
                                      np.clip(view.astype(np.float32), np.float32(window[0]), np.float32(window[1])))
        np.testing.assert_array_equal(view, before)  # the input is never modified


def test_bad_window_and_out_are_refused():
    hu = np.zeros((4, 4), np.int16)
    with pytest.raises(ValueError, match="low < high"):
        window_to_unit(hu, (275, -125))
    with pytest.raises(ValueError, match="low < high"):
        clip_to_window(hu, (0, 0))
    with pytest.raises(ValueError, match="out must be float32 of shape"):
        window_to_unit(hu, (-125, 275), out=np.empty((4, 4), np.float64))
    with pytest.raises(ValueError, match="out must be float32 of shape"):
        window_to_unit(hu, (-125, 275), out=np.empty((4, 5), np.float32))
