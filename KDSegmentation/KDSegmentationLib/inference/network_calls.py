"""The network calls of one segmentation run: on worker threads next to the caller, or inline.

ONNX Runtime releases the GIL during a run, so while the network works on batch k (and
k+1, with two workers) on worker threads, the caller's thread prepares the next batch
and spreads the oldest finished one's labels: the same arithmetic as one batch after
another, reordered in time. Calls start in submission order; the caller bounds how many
it submits ahead, which bounds memory, and takes the results in submission order.
Closing cancels calls not yet started and waits for the running ones, so no thread
outlives the run (cancellation, errors, Ctrl-C). An exception raised by a call reaches
the caller unchanged (same object, type and message) from ``Future.result()``.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np

from .stage_clock import StageClock

__all__ = ["NetworkCalls"]

WORKER_NAME = "kdseg-network"


class NetworkCalls:
    """Submits network calls and hands back futures of their outputs; use as a context manager.

    Args:
        run: the network, ``run(batch (N, 1, H, W) float32) -> logits (N, C, H, W)``; with
            ``workers`` > 1 it is called from several threads at once (an ONNX Runtime
            session allows that).
        workers: threads running calls (0: each call runs inline in :meth:`submit`).
        clock: records each call's (start, end) as work of its network stage.

    Raises:
        ValueError: ``workers`` < 0.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], workers: int, clock: StageClock) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self._run = run
        self._clock = clock
        self._pool: Optional[ThreadPoolExecutor] = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix=WORKER_NAME) if workers else None)

    @property
    def overlapping(self) -> bool:
        return self._pool is not None

    def _timed_run(self, batch: np.ndarray) -> np.ndarray:
        with self._clock.measure(self._clock.network_stage):
            return self._run(batch)

    def submit(self, batch: np.ndarray) -> "Future[np.ndarray]":
        """Start (or queue) one call; its result or exception comes from the returned future."""
        if self._pool is not None:
            return self._pool.submit(self._timed_run, batch)
        done: Future = Future()
        try:
            done.set_result(self._timed_run(batch))
        except Exception as exc:  # handed over like the worker's: raised by done.result()
            done.set_exception(exc)
        return done

    def close(self) -> None:
        """Cancel calls not started, wait for the running ones; the worker threads have ended on return."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "NetworkCalls":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
