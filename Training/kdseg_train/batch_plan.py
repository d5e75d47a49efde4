"""Which samples every optimiser step sees: a pure function of (seed, step, rank).

Epoch ``e`` visits the dataset in the order ``torch.randperm(n)`` drawn from a generator
seeded with ``seed + e``; global batch ``j`` of that epoch is positions
``[j*B, (j+1)*B)``; an incomplete last batch is skipped so that every step has
the same batch size and every process the same share. With ``W`` processes, rank ``r``
takes the contiguous slice ``[r*B/W, (r+1)*B/W)`` of each global batch, so the union
over ranks is exactly the single-process batch: the distributed sampler and the
single-process loader are the same plan.

Because nothing here has state, resuming at step ``s`` replays the batches an
uninterrupted run would have drawn, whatever the number of DataLoader workers.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

import torch
from torch.utils.data import Dataset, Sampler
from .errors import UsageError

__all__ = ["BatchPlan", "EpochIndexedDataset"]


class BatchPlan(Sampler):
    """Batch sampler yielding, for steps ``start_step .. max_steps - 1``, this rank's ``(epoch, index)`` list.

    Args:
        num_samples: dataset length n.
        global_batch_size: B, summed over processes.
        seed: base seed of the epoch permutations.
        start_step: first step to yield (the step a resumed run continues from).
        max_steps: one past the last step.
        rank / world_size: this process and the number of processes (B % W == 0).
    """

    def __init__(self, num_samples: int, global_batch_size: int, seed: int, start_step: int = 0,
                 max_steps: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if global_batch_size < 1:
            raise UsageError(f"data.batch_size must be >= 1, got {global_batch_size}")
        if global_batch_size % world_size:
            raise UsageError(f"data.batch_size {global_batch_size} is the global batch and must be divisible by "
                             f"the number of processes ({world_size})")
        if num_samples < global_batch_size:
            raise UsageError(f"the training set has {num_samples} slices, fewer than data.batch_size "
                             f"{global_batch_size}; lower data.batch_size or add cases")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.seed, self.start_step, self.max_steps = seed, start_step, max_steps
        self.rank, self.world_size = rank, world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch_size

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_batch(self, step: int) -> List[int]:
        """Dataset indices of global batch ``step`` (all ranks)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))
        first = position * self.global_batch_size
        return order[first:first + self.global_batch_size].tolist()

    def local_batch(self, step: int) -> List[Tuple[int, int]]:
        """This rank's ``(epoch, index)`` pairs of step ``step``."""
        epoch = self.epoch_of(step)
        ids = self.global_batch(step)
        first = self.rank * self.local_batch_size
        return [(epoch, i) for i in ids[first:first + self.local_batch_size]]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for step in range(self.start_step, self.max_steps):
            yield self.local_batch(step)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)


class EpochIndexedDataset(Dataset):
    """Wraps a dataset whose augmentation depends on ``set_epoch``: item ``(epoch, i)``.

    Setting the epoch per item (inside whichever worker process loads it) keeps the
    augmentation of sample ``i`` in epoch ``e`` identical with 0 or N workers.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Tuple[int, int]):
        epoch, index = item
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]
