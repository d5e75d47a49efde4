"""NIfTI scaling in float32 equals ITK's double-precision formula for every stored value it is used for."""

import numpy as np
import pytest

from KDSegmentationLib.imaging.nifti_scaling import ScaledVoxelSink, exact_scaling


def _itk_formula(stored, slope, intercept):
    """ITK's NIfTI rescale: double arithmetic with the header's float32 slope and intercept, rounded to float."""
    return (stored.astype(np.float64) * float(np.float32(slope)) + float(np.float32(intercept))).astype(np.float32)


@pytest.mark.parametrize("dtype, slope, intercept", [("<i2", 1, -1024), ("<u2", 1, -1024), ("<i2", -255, 65000),
                                                     ("<u2", 255, -3), ("<u1", 7, -1), ("<i1", -2, 100)])
def test_every_stored_value_in_pieces_that_cut_voxels_matches_itk(dtype, slope, intercept):
    info = np.iinfo(dtype)
    stored = np.arange(int(info.min), int(info.max) + 1).astype(dtype)
    scaling = exact_scaling(np.dtype(dtype), slope, intercept)
    assert scaling is not None
    values = np.full(stored.size, np.nan, np.float32)
    sink = ScaledVoxelSink(values, scaling)
    data = np.frombuffer(stored.tobytes(), np.uint8)
    start = 0
    for size in [1, 3, 1, 997] * (data.size // 1002 + 1):  # odd piece sizes: voxels split, 1-byte pieces
        piece = data[start:start + size]
        if piece.size:
            sink.take(piece, start)
        start += piece.size
    np.testing.assert_array_equal(values, _itk_formula(stored, slope, intercept))


@pytest.mark.parametrize("dtype, slope, intercept", [
    ("<i2", 0.5, 0),  # fractional slope
    ("<i2", 1, 0.25),  # fractional intercept
    ("<i4", 1, -1024),  # 32-bit values can exceed 2**24
    ("<f4", 2, 1),  # float voxels
    ("<i2", 0, -1024),  # slope 0 with an intercept
    ("<i2", 512, 0),  # 32768 * 512 reaches 2**24
    ("<u2", 1, 2 ** 24),
    ("<i2", float("nan"), 0),
])
def test_scalings_float32_cannot_reproduce_are_refused(dtype, slope, intercept):
    assert exact_scaling(np.dtype(dtype), slope, intercept) is None


def test_pieces_out_of_order_or_beyond_the_image_are_refused():
    sink = ScaledVoxelSink(np.zeros(2, np.float32), exact_scaling(np.dtype("<i2"), 1, 0))
    with pytest.raises(ValueError, match="expected 0"):
        sink.take(np.zeros(2, np.uint8), 2)
    with pytest.raises(ValueError, match="the image holds 2"):
        sink.take(np.zeros(6, np.uint8), 0)
