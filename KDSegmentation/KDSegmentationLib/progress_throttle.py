"""Rate-limit a progress callback: a download reports every 64 KB chunk, a GUI redraws each.

Events pass when the stage changes, when a stage completes (``current == total``) and
otherwise at most ``max_per_second`` times per second; the rest are dropped (each
event carries the absolute position, so nothing is lost but intermediate redraws).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from .progress import ProgressCallback, ProgressEvent, Stage

__all__ = ["MAX_UPDATES_PER_SECOND", "ThrottledProgress", "throttle_progress"]

MAX_UPDATES_PER_SECOND = 10.0


class ThrottledProgress:
    """A :data:`ProgressCallback` forwarding at most ``max_per_second`` events per second.

    Args:
        callback: where events go.
        max_per_second: limit for events within one stage (> 0).
        clock: monotonic seconds (replaceable in tests).
    """

    def __init__(self, callback: ProgressCallback, max_per_second: float = MAX_UPDATES_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_per_second <= 0:
            raise ValueError(f"max_per_second must be > 0, got {max_per_second}")
        self._callback = callback
        self._interval = 1.0 / max_per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._last_stage: Optional[Stage] = None
        self._last_time = float("-inf")

    def __call__(self, event: ProgressEvent) -> None:
        now = self._clock()
        finished = event.total is not None and event.current >= event.total
        with self._lock:
            if event.stage == self._last_stage and not finished and now - self._last_time < self._interval:
                return
            self._last_stage, self._last_time = event.stage, now
        self._callback(event)


def throttle_progress(callback: Optional[ProgressCallback],
                      max_per_second: float = MAX_UPDATES_PER_SECOND) -> Optional[ProgressCallback]:
    """``callback`` limited to ``max_per_second`` updates per stage (None stays None)."""
    if callback is None or isinstance(callback, ThrottledProgress):
        return callback
    return ThrottledProgress(callback, max_per_second)
