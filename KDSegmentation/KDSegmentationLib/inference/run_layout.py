"""How a segmentation's CPU inference threads are laid out: concurrent network calls sharing one session.

ONNX Runtime parallelises one call over its intra-op threads with a barrier after every
parallel section; for the small student at 128 x 128 that keeps two threads at ~60% of the
machine's matmul peak, and when the pipeline's own thread (preparing and spreading the
batches next to the network) takes a core from them, each barrier waits for the thread
that lost it. Single-thread calls have no barrier: on the 2-core development machine, two
one-thread calls at a time next to the pipeline's thread ran 150 slices of 512 x 512
faster than one two-thread call (in-process, labels identical; figures in the README's
Speed section). So the threads are split into at most :data:`MAX_CONCURRENT_RUNS` calls
at a time.

The calls share one session, and a session has one intra-op thread pool: with
``intra_op_num_threads`` = T it starts T - 1 pool threads, and every call in progress
computes on its own (calling) thread plus whichever pool threads are free. So k concurrent
calls on a session of T intra-op threads keep k + T - 1 threads busy, not k x T (two calls
on a 4-thread session: 5 threads). :func:`run_layout` sizes the session so that the
threads asked for are the threads that work. On larger machines the calls then share
the pool (untested there: the same rule, not a measured optimum).
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
    """Network calls run at once on the CPU, and the intra-op threads of the one session they share.

    Args:
        concurrent_runs: calls in progress at the same time (>= 1), each computing on its own thread.
        session_threads: the session's ``intra_op_num_threads`` (>= 1): its pool holds
            ``session_threads - 1`` threads, shared by the calls in progress.
    """

    concurrent_runs: int = 1
    session_threads: int = 1

    def __post_init__(self) -> None:
        if self.concurrent_runs < 1 or self.session_threads < 1:
            raise ValueError(f"concurrent_runs and session_threads must be >= 1, got {self.concurrent_runs} and "
                             f"{self.session_threads}")

    @property
    def threads(self) -> int:
        """Threads computing while every call is in progress: the calls' own and the session's pool."""
        return self.concurrent_runs + self.session_threads - 1


def run_layout(threads: Optional[int] = None, cores: Optional[int] = None) -> RunLayout:
    """Split ``threads`` inference threads into concurrent calls on one shared session.

    Args:
        threads: CPU threads for inference in total (None: one per usable core).
        cores: usable cores (default :func:`~.thread_limits.usable_cores`), for ``threads=None``.

    Returns:
        ``min(threads, MAX_CONCURRENT_RUNS)`` calls on a session of
        ``threads - calls + 1`` intra-op threads, so that :attr:`RunLayout.threads` is ``threads``
        (two cores: two calls on a one-thread session).

    Raises:
        ValueError: ``threads`` below 1.
    """
    total = (usable_cores() if cores is None else cores) if threads is None else threads
    if total < 1:
        raise ValueError(f"threads must be at least 1, got {total}")
    runs = min(total, MAX_CONCURRENT_RUNS)
    return RunLayout(runs, total - runs + 1)
