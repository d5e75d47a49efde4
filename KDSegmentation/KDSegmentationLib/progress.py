"""Progress reporting and cancellation shared by the CLI, the Slicer module and training.

The pipeline never prints: it calls a ``ProgressCallback`` with
:class:`ProgressEvent` objects and checks a :class:`CancelToken` between batches.
The CLI turns events into a tqdm bar; the Slicer module forwards them from its
worker thread to the GUI through a queue.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional

from .errors import CancelledError

__all__ = ["Stage", "ProgressEvent", "ProgressCallback", "CancelToken", "report"]


class Stage(str, Enum):
    """Stages of one segmentation run, in order."""

    INSTALLING = "installing"
    DOWNLOADING = "downloading"
    LOADING = "loading"
    READING = "reading"
    PREPROCESSING = "preprocessing"
    INFERRING = "inferring"
    POSTPROCESSING = "postprocessing"
    WRITING = "writing"
    DONE = "done"

    def label(self) -> str:
        """Human-readable stage name for progress bars and status lines."""
        return self.value.capitalize()


@dataclass(frozen=True)
class ProgressEvent:
    """One progress update.

    Args:
        stage: the stage being worked on.
        current: units done within the stage (e.g. slices inferred, bytes downloaded).
        total: units in the stage, or None when unknown.
        message: short human-readable text, e.g. "slice 40 of 112".
    """

    stage: Stage
    current: int = 0
    total: Optional[int] = None
    message: str = ""

    @property
    def fraction(self) -> Optional[float]:
        """Completed fraction of the stage in [0, 1], or None when total is unknown."""
        if not self.total:
            return None
        return min(1.0, max(0.0, self.current / self.total))


ProgressCallback = Callable[[ProgressEvent], None]


def report(callback: Optional[ProgressCallback], stage: Stage, current: int = 0,
           total: Optional[int] = None, message: str = "") -> None:
    """Send one event to ``callback`` if there is one."""
    if callback is not None:
        callback(ProgressEvent(stage, current, total, message))


class CancelToken:
    """Thread-safe cancellation flag, set by one thread and polled by another."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Request cancellation; the worker stops at its next check."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`CancelledError` if cancellation was requested."""
        if self._event.is_set():
            raise CancelledError("Segmentation cancelled by the user.")
