"""Run a segmentation off the GUI thread and hand its progress back through a queue.

Slicer's GUI, MRML and VTK belong to the main thread; the worker touches only numpy,
SimpleITK and ONNX Runtime (which release the GIL) and communicates through a
``queue.Queue`` that the GUI drains from a timer with :meth:`BackgroundTask.poll`.
Cancelling sets a :class:`CancelToken` that the pipeline checks between batches; the
task then ends with a cancelled :class:`TaskFailed` and no result, so the caller has
nothing half-made to clean up.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Union

from ..errors import CancelledError
from ..progress import CancelToken, ProgressCallback, ProgressEvent

__all__ = ["TaskFinished", "TaskFailed", "BackgroundTask"]


@dataclass(frozen=True)
class TaskFinished:
    result: Any


@dataclass(frozen=True)
class TaskFailed:
    error: BaseException

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, CancelledError)


TaskMessage = Union[ProgressEvent, TaskFinished, TaskFailed]


class BackgroundTask:
    """One job ``work(progress, cancel) -> result`` on a daemon thread.

    Exactly one :class:`TaskFinished` or :class:`TaskFailed` message ends the stream;
    a cancelled job ends with ``TaskFailed`` whose ``cancelled`` is True and no result.
    """

    def __init__(self, work: Callable[[ProgressCallback, CancelToken], Any]) -> None:
        self._work = work
        self._queue: "queue.Queue[TaskMessage]" = queue.Queue()
        self.cancel_token = CancelToken()
        self._thread: Optional[threading.Thread] = None
        self._done = threading.Event()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a BackgroundTask can be started once")
        self._thread = threading.Thread(target=self._run, name="KDSegmentation worker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            result = self._work(self._queue.put, self.cancel_token)
            if self.cancel_token.cancelled:
                raise CancelledError("Segmentation cancelled by the user.")
            self._queue.put(TaskFinished(result))
        except BaseException as exc:  # reported to the GUI thread, never lost in the worker
            self._queue.put(TaskFailed(exc))
        finally:
            self._done.set()

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def stop(self, timeout: float = 5.0) -> bool:
        """Cancel and join the worker (module closed or application quitting).

        The pipeline checks the token between batches, so the worker ends within about one
        batch. Returns True when it has ended (or never started); False when it is still
        inside a long call after ``timeout`` seconds (a daemon thread: it cannot keep the
        application alive).
        """
        self.cancel()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the worker ends (for scripts and tests); True when it did."""
        return self._done.wait(timeout)

    def poll(self, yield_seconds: float = 0.0) -> List[TaskMessage]:
        """All messages queued since the last call.

        Args:
            yield_seconds: first wait up to this long for the worker to finish, with the
                GIL released. Slicer's main thread holds the GIL while Qt is idle, so the
                worker's Python code runs only while the main thread waits or runs Python;
                a GUI timer passes a few milliseconds here to keep the worker moving. The
                wait ends early when the worker finishes.
        """
        if yield_seconds > 0:
            self._done.wait(yield_seconds)
        messages: List[TaskMessage] = []
        while True:
            try:
                messages.append(self._queue.get_nowait())
            except queue.Empty:
                return messages
