"""Block counts of a mask and blocks back to voxels (synthetic arrays: this is index math)."""

import numpy as np
import pytest

from KDSegmentationLib.inference.voxel_blocks import block_counts, expand_blocks, voxel_box_of_blocks


@pytest.mark.parametrize("block", [(1, 4, 4), (2, 3, 5), (1, 1, 1), (3, 1, 7)])
def test_block_counts_equal_sums_over_padded_blocks(block):
    mask = np.random.default_rng(1).random((7, 13, 22)) < 0.3
    counts = block_counts(mask, block)
    padded_shape = [-(-n // b) * b for n, b in zip(mask.shape, block)]
    padded = np.zeros(padded_shape, bool)
    padded[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    expected = padded.reshape(padded_shape[0] // block[0], block[0], padded_shape[1] // block[1], block[1],
                              padded_shape[2] // block[2], block[2]).sum(axis=(1, 3, 5))
    np.testing.assert_array_equal(counts, expected)
    assert counts.dtype == np.uint8 and int(counts.sum()) == int(mask.sum())


def test_block_counts_widen_the_type_for_blocks_over_255_voxels():
    counts = block_counts(np.ones((2, 20, 20), bool), (2, 16, 16))
    assert counts.dtype == np.uint16 and counts.tolist() == [[[512, 128], [128, 32]]]


def test_expand_blocks_repeats_each_block_over_its_voxels_and_crops():
    coarse = np.arange(12).reshape(1, 3, 4)
    out = expand_blocks(coarse, (2, 3, 2), (1, 8, 7))
    assert out.shape == (1, 8, 7)
    z, y, x = np.indices(out.shape)
    np.testing.assert_array_equal(out, coarse[z // 2, y // 3, x // 2])
    with pytest.raises(ValueError, match="do not cover"):
        expand_blocks(coarse, (2, 3, 2), (1, 10, 7))


def test_voxel_box_of_blocks_is_clamped_to_the_array():
    selected = np.zeros((3, 4, 5), bool)
    selected[1, 2, 1] = selected[2, 3, 4] = True
    blocks, voxels = voxel_box_of_blocks(selected, (1, 4, 4), (3, 15, 18))
    assert blocks == (slice(1, 3), slice(2, 4), slice(1, 5))
    assert voxels == (slice(1, 3), slice(8, 15), slice(4, 18))
    with pytest.raises(ValueError, match="no block"):
        voxel_box_of_blocks(np.zeros((2, 2, 2), bool), (1, 1, 1), (2, 2, 2))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="bool"):
        block_counts(np.ones((2, 2, 2), np.uint8), (1, 2, 2))
    with pytest.raises(ValueError, match="size >= 1 for each of the 3 axes"):
        block_counts(np.ones((2, 2, 2), bool), (1, 2))
    with pytest.raises(ValueError, match="size >= 1"):
        block_counts(np.ones((2, 2, 2), bool), (1, 0, 2))
