"""How a segmentation's CPU inference threads are laid out: concurrent network calls x threads per call.

ONNX Runtime parallelises one call over its intra-op threads with a barrier after every
parallel section; for the small student at 128 x 128 that keeps two threads at ~60% of the
machine's matmul peak, and when the pipeline's own thread (preparing and spreading the
batches next to the network) takes a core from them, each barrier waits for the thread
that lost it. Single-thread calls have no barrier: on the 2-core development machine, two
one-thread calls at a time next to the pipeline's thread ran 150 slices of 512 x 512
faster than one two-thread call (in-process, labels identical; figures in the README's
Speed section). So the threads are split into at most :data:`MAX_CONCURRENT_RUNS` calls
at a time; on larger machines each call keeps several threads (untested there: the same
rule, not a measured optimum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .thread_limits import usable_cores

__all__ = ["MAX_CONCURRENT_RUNS", "RunLayout", "run_layout"]

MAX_CONCURRENT_RUNS = 2
"""Network calls at a time: two keep the cores busy while one call is in a serial section and the pipeline's thread
works; more would hold more batches in memory and balance a 150-slice CT's ~19 batches worse."""


@dataclass(frozen=True)
class RunLayout:
    """Network calls run at once on the CPU and ONNX Runtime intra-op threads per call.

    Args:
        concurrent_runs: calls in progress at the same time (>= 1).
        threads_per_run: intra-op threads of the session (>= 1).
    """

    concurrent_runs: int = 1
    threads_per_run: int = 1

    def __post_init__(self) -> None:
        if self.concurrent_runs < 1 or self.threads_per_run < 1:
            raise ValueError(f"concurrent_runs and threads_per_run must be >= 1, got {self.concurrent_runs} and "
                             f"{self.threads_per_run}")

    @property
    def threads(self) -> int:
        return self.concurrent_runs * self.threads_per_run


def run_layout(threads: Optional[int] = None, cores: Optional[int] = None) -> RunLayout:
    """Split ``threads`` inference threads into concurrent calls of equal thread counts.

    Args:
        threads: CPU threads for inference in total (None: one per usable core).
        cores: usable cores (default :func:`~.thread_limits.usable_cores`), for ``threads=None``.

    Returns:
        ``min(threads, MAX_CONCURRENT_RUNS)`` calls of ``threads // calls`` threads each
        (an odd remainder is left unused rather than making the calls unequal).

    Raises:
        ValueError: ``threads`` below 1.
    """
    total = (usable_cores() if cores is None else cores) if threads is None else threads
    if total < 1:
        raise ValueError(f"threads must be at least 1, got {total}")
    runs = min(total, MAX_CONCURRENT_RUNS)
    return RunLayout(runs, total // runs)
