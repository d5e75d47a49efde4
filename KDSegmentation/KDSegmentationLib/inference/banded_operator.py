"""A banded linear operator along one image axis, applied as a few small dense matrix products.

Putting a slice on the model grid (anti-aliasing blur, then linear sampling) is linear
along each axis: an ``(n_out, n_in)`` matrix per axis whose rows each hold a short run
of consecutive non-zero weights. Summed tap by tap, every weight costs numpy a pass over
the slice; as one dense product, most of the arithmetic multiplies zeros (512 -> 128
pixels at 3 mm: about 16 of 512 weights per row are not zero). In between, runs of
consecutive output rows are grouped into blocks and each block is one dense product
(BLAS) over just the input rows it reads, a few times the minimal arithmetic at BLAS speed.

Each product is kept small enough (fewer than 2**18 multiply-adds) that OpenBLAS, numpy's
BLAS, computes it on the calling thread: its worker threads, once woken, keep spinning
after the call and would then compete with ONNX Runtime's threads on a small machine.
Every slice of a batch goes through the same products of the same shapes, so a slice's
result does not depend on the batch it is in (the live preview runs batches of one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

__all__ = ["OperatorBlock", "BandedOperator"]

# OpenBLAS runs a gemm with m * n * k at or below 65536 * 4 (its GEMM_MULTITHREAD_THRESHOLD) on one thread.
SINGLE_THREAD_PRODUCT = 65536 * 4


@dataclass(frozen=True)
class OperatorBlock:
    """Output rows ``[out_start, out_stop)`` are ``weights @ input[in_start:in_stop]``.

    Attributes:
        out_start, out_stop: output index range.
        in_start, in_stop: input index range the block reads.
        weights: (out_stop - out_start, in_stop - in_start) float32, read-only.
    """

    out_start: int
    out_stop: int
    in_start: int
    in_stop: int
    weights: np.ndarray


def _read_range(matrix: np.ndarray, start: int, stop: int) -> Tuple[int, int]:
    columns = np.flatnonzero(matrix[start:stop].any(axis=0))
    return int(columns[0]), int(columns[-1]) + 1


@dataclass(frozen=True)
class BandedOperator:
    """An ``(n_out, n_in)`` linear operator stored as dense blocks of consecutive non-zero rows.

    Output rows whose weights are all zero are in no block and come out as 0.

    Args:
        n_out, n_in: operator size.
        blocks: non-overlapping blocks in increasing output order.
    """

    n_out: int
    n_in: int
    blocks: Tuple[OperatorBlock, ...]

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, other_length: int, max_block_rows: int = 8) -> "BandedOperator":
        """Blocks of the non-zero rows of ``matrix``, each product small enough for one BLAS thread.

        Args:
            matrix: (n_out, n_in) weights (cast to float32).
            other_length: length of the array's other axis (the columns when the operator runs along
                the rows): each block's product costs rows x inputs read x ``other_length``.
            max_block_rows: most output rows per block (more rows per product, fewer products, but
                more zeros in each block).
        """
        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] < 1:
            raise ValueError(f"expected a non-empty (n_out, n_in) matrix, got shape {matrix.shape}")
        if other_length < 1 or max_block_rows < 1:
            raise ValueError(f"other_length and max_block_rows must be >= 1, got {other_length}, {max_block_rows}")
        nonzero = matrix.any(axis=1)
        blocks = []
        row = 0
        while row < matrix.shape[0]:
            if not nonzero[row]:
                row += 1
                continue
            stop = row + 1
            while (stop < matrix.shape[0] and nonzero[stop] and stop - row < max_block_rows):
                start_in, stop_in = _read_range(matrix, row, stop + 1)
                if (stop + 1 - row) * (stop_in - start_in) * other_length > SINGLE_THREAD_PRODUCT:
                    break
                stop += 1
            start_in, stop_in = _read_range(matrix, row, stop)
            weights = np.ascontiguousarray(matrix[row:stop, start_in:stop_in])
            weights.flags.writeable = False
            blocks.append(OperatorBlock(row, stop, start_in, stop_in, weights))
            row = stop
        return cls(int(matrix.shape[0]), int(matrix.shape[1]), tuple(blocks))

    @property
    def support(self) -> Tuple[int, int]:
        """Input index range ``[start, stop)`` the operator reads (``(0, 0)`` when it reads nothing)."""
        if not self.blocks:
            return 0, 0
        return min(block.in_start for block in self.blocks), max(block.in_stop for block in self.blocks)

    def row_sums(self) -> np.ndarray:
        """(n_out,) float64 sum of each output row's weights: the output for an input of ones."""
        sums = np.zeros(self.n_out, dtype=np.float64)
        for block in self.blocks:
            sums[block.out_start:block.out_stop] = block.weights.sum(axis=1, dtype=np.float64)
        return sums

    def reversed_input(self) -> "BandedOperator":
        """The same operator on the input axis read backwards (input index i becomes n_in - 1 - i)."""
        blocks = []
        for block in self.blocks:
            weights = np.ascontiguousarray(block.weights[:, ::-1])
            weights.flags.writeable = False
            blocks.append(OperatorBlock(block.out_start, block.out_stop, self.n_in - block.in_stop,
                                        self.n_in - block.in_start, weights))
        return BandedOperator(self.n_out, self.n_in, tuple(blocks))

    def apply(self, planes: np.ndarray, axis: int, first_input: int = 0,
              out: Optional[np.ndarray] = None) -> np.ndarray:
        """The operator along ``axis`` of every plane.

        Args:
            planes: (N, A, B) float32; along ``axis`` its index 0 is input index ``first_input``
                (e.g. the planes cropped to :attr:`support`), and it covers every input read.
            axis: 1 (along the rows: (N, n_in', B) -> (N, n_out, B)) or 2 (along the columns:
                (N, A, n_in') -> (N, A, n_out)).
            first_input: input index of ``planes``' first row (axis 1) or column (axis 2).
            out: optional float32 array of the result's shape to write into.

        Returns:
            (N, n_out, B) or (N, A, n_out) float32.
        """
        if planes.ndim != 3 or planes.dtype != np.float32:
            raise ValueError(f"expected (N, A, B) float32 planes, got shape {planes.shape} and {planes.dtype}")
        if axis not in (1, 2):
            raise ValueError(f"axis must be 1 (rows) or 2 (columns), got {axis}")
        start, stop = self.support
        if self.blocks and (start < first_input or stop > first_input + planes.shape[axis]):
            raise ValueError(f"the operator reads inputs {start}..{stop - 1}; the planes hold "
                             f"{first_input}..{first_input + planes.shape[axis] - 1} along axis {axis}")
        shape = list(planes.shape)
        shape[axis] = self.n_out
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != tuple(shape) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 of shape {tuple(shape)}, got {out.dtype} {out.shape}")
        written = 0
        for block in self.blocks:
            inputs = slice(block.in_start - first_input, block.in_stop - first_input)
            outputs = slice(block.out_start, block.out_stop)
            if block.out_start > written:
                self._zero(out, axis, slice(written, block.out_start))
            if axis == 1:
                np.matmul(block.weights, planes[:, inputs, :], out=out[:, outputs, :])
            else:
                np.matmul(planes[:, :, inputs], block.weights.T, out=out[:, :, outputs])
            written = block.out_stop
        if written < self.n_out:
            self._zero(out, axis, slice(written, self.n_out))
        return out

    @staticmethod
    def _zero(out: np.ndarray, axis: int, rows: slice) -> None:
        if axis == 1:
            out[:, rows, :] = 0.0
        else:
            out[:, :, rows] = 0.0
