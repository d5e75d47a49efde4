"""Class-balanced batches: every organ is drawn as often as any other, as a pure function of (seed, step, rank).

With two patients, the liver is on half the slices and the gallbladder on a tenth, so
uniform sampling shows the network the small organs rarely. Each sample of global batch
``t`` is drawn, with a generator seeded by ``(seed, t)``, as: pick one of the K organs or
the "any slice" bucket uniformly, then a slice uniformly among those whose model input
shows that organ (any slice for the bucket, which keeps organ-free anatomy in view).
Every organ is then on at least ``1 / (K + 1)`` of the samples; organs that share slices
with others (the liver) are seen more. Sampling is with replacement, so the same slice can
occur twice in a batch; its augmentation is keyed by the sample's position in the run
(``step * B + position``), not by the slice, so the two copies differ.

Like :class:`~kdseg_train.batch_plan.BatchPlan`, nothing here has state: a run resumed
at step ``s`` draws the batches an uninterrupted run would have drawn, and rank ``r`` of
``W`` takes the contiguous share ``[r B / W, (r + 1) B / W)`` of each global batch.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import Sampler
from .errors import UsageError

__all__ = ["BalancedBatchPlan", "balanced_slice_weights"]


def balanced_slice_weights(presence: np.ndarray) -> np.ndarray:
    """Probability of drawing each slice under the organ-then-slice scheme.

    Args:
        presence: (N, K) bool, slice n shows organ k.

    Returns:
        (N,) float64 probabilities summing to 1. Organs on no slice are left out of the draw.
    """
    presence = np.asarray(presence, dtype=bool)
    if presence.ndim != 2 or presence.shape[0] < 1:
        raise UsageError(f"presence must be (N slices, K organs), got shape {presence.shape}")
    n = presence.shape[0]
    counts = presence.sum(axis=0)
    buckets = [presence[:, k] / counts[k] for k in range(presence.shape[1]) if counts[k] > 0]
    buckets.append(np.full(n, 1.0 / n))  # "any slice"
    weights = np.mean(buckets, axis=0)
    return weights / weights.sum()


class BalancedBatchPlan(Sampler):
    """Batch sampler yielding, for steps ``start_step .. max_steps - 1``, this rank's ``(key, index)`` list.

    Args:
        presence: (N, K) bool organ presence per slice (``GridSliceDataset.organ_presence``).
        global_batch_size: B, summed over processes.
        seed: base seed.
        start_step: first step to yield.
        max_steps: one past the last step.
        rank / world_size: this process and the number of processes (B % W == 0).
    """

    def __init__(self, presence: np.ndarray, global_batch_size: int, seed: int, start_step: int = 0,
                 max_steps: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if global_batch_size < 1:
            raise UsageError(f"data.batch_size must be >= 1, got {global_batch_size}")
        if global_batch_size % world_size:
            raise UsageError(f"data.batch_size {global_batch_size} is the global batch and must be divisible by "
                             f"the number of processes ({world_size})")
        self.weights = torch.as_tensor(balanced_slice_weights(presence))
        self.num_samples = int(self.weights.numel())
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.seed, self.start_step, self.max_steps = int(seed), int(start_step), int(max_steps)
        self.rank, self.world_size = rank, world_size

    def epoch_of(self, step: int) -> int:
        """Passes over the data's size completed before ``step`` (for logs only)."""
        return step * self.global_batch_size // self.num_samples

    def global_batch(self, step: int) -> List[int]:
        """Slice indices of global batch ``step`` (all ranks)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.multinomial(self.weights, self.global_batch_size, replacement=True,
                                 generator=generator).tolist()

    def local_batch(self, step: int) -> List[Tuple[int, int]]:
        """This rank's ``(augmentation key, index)`` pairs of step ``step``."""
        ids = self.global_batch(step)
        first = self.rank * self.local_batch_size
        return [(step * self.global_batch_size + first + j, i)
                for j, i in enumerate(ids[first:first + self.local_batch_size])]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for step in range(self.start_step, self.max_steps):
            yield self.local_batch(step)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)
