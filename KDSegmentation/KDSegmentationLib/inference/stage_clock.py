"""Busy intervals of the pipeline's stages, and the share of the wall time each one leaves exposed.

When the network runs on its own thread (:mod:`.network_calls`), the caller prepares the
next batch and spreads the previous batch's labels meanwhile: stage times overlap, and
their sum is no longer the wall time. Two honest figures remain:

- **busy**: how long each stage worked, wherever and whenever it ran (what a faster
  kernel shortens);
- **exposed**: a partition of the wall time. The network stage counts the wall time
  during which at least one network call was running; every other stage counts only its
  time while no network call was running (what makes a user wait beyond the network).
  Without overlap, busy and exposed are equal. With concurrent network calls, the
  network's busy time (the sum of its calls' durations) exceeds its wall time. Only
  what is recorded counts: work a stage hands to threads of its own inside one recorded
  interval (the organ clean-up) counts as that interval's wall time.
"""

from __future__ import annotations

import bisect
import threading
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Sequence, Tuple

__all__ = ["StageClock", "merged", "time_outside"]

Interval = Tuple[float, float]


def time_outside(interval: Interval, covered: Sequence[Interval], covered_ends: Sequence[float]) -> float:
    """Seconds of ``interval`` not covered by ``covered``.

    Args:
        interval: (start, end) in seconds of one clock.
        covered: disjoint (start, end) intervals of the same clock, sorted by start (:func:`merged`).
        covered_ends: their ends (sorted too, as the intervals are disjoint), for the search.
    """
    start, end = interval
    overlap = 0.0
    # Only intervals ending after ``start`` can overlap; a bisection finds the first (long CTs, batch 1).
    for c_start, c_end in covered[bisect.bisect_right(covered_ends, start):]:
        if c_start >= end:
            break
        overlap += min(end, c_end) - max(start, c_start)
    return max(0.0, (end - start) - overlap)


def merged(intervals: Sequence[Interval]) -> List[Interval]:
    """The union of ``intervals`` as disjoint intervals sorted by start (touching ones joined)."""
    union: List[Interval] = []
    for start, end in sorted(intervals):
        if union and start <= union[-1][1]:
            union[-1] = (union[-1][0], max(union[-1][1], end))
        else:
            union.append((start, end))
    return union


class StageClock:
    """Records (start, end) of each piece of work per stage; thread-safe.

    Args:
        network_stage: the stage whose intervals are network calls (possibly overlapping each other).
        stages: stage names, in the order :meth:`busy` and :meth:`exposed` report them.
    """

    def __init__(self, network_stage: str = "infer",
                 stages: Sequence[str] = ("preprocess", "infer", "postprocess")) -> None:
        if network_stage not in stages:
            raise ValueError(f"network_stage {network_stage!r} is not one of the stages {list(stages)}")
        self.network_stage = network_stage
        self._intervals: Dict[str, List[Interval]] = {stage: [] for stage in stages}
        self._lock = threading.Lock()

    def add(self, stage: str, start: float, end: float) -> None:
        """Record that ``stage`` worked from ``start`` to ``end`` (``time.perf_counter`` seconds)."""
        if stage not in self._intervals:
            raise ValueError(f"unknown stage {stage!r}; the clock has {list(self._intervals)}")
        with self._lock:
            self._intervals[stage].append((start, end))

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Record the ``with`` block as work of ``stage`` (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, start, time.perf_counter())

    def busy(self) -> Dict[str, float]:
        """Seconds each stage worked, overlapping or not."""
        with self._lock:
            return {stage: sum(end - start for start, end in spans) for stage, spans in self._intervals.items()}

    def exposed(self) -> Dict[str, float]:
        """Wall seconds per stage: while any network call ran, and each other stage outside of that."""
        with self._lock:
            network = merged(self._intervals[self.network_stage])
            ends = [end for _, end in network]
            return {stage: (sum(end - start for start, end in network) if stage == self.network_stage
                            else sum(time_outside(span, network, ends) for span in spans))
                    for stage, spans in self._intervals.items()}
