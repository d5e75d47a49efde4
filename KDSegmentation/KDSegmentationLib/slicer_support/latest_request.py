"""Compute only the newest request on a worker thread: older requests are dropped, never queued.

The live preview submits the slice under view every time the user scrolls, far faster
than a slice can be segmented. Queueing those requests would make the overlay lag
further behind the view the longer the user scrolls; instead a request that has not
started when a newer one arrives is replaced, and a result that finishes after a
newer request was submitted is thrown away (it belongs to a slice no longer shown).
At most one computation runs at a time, so the worker never competes with itself.

Like :class:`BackgroundTask`, nothing is called back on the worker thread: the GUI
thread :meth:`~LatestRequestWorker.poll`\\ s from a timer and gets at most one
message, the newest request's outcome. Submitting never waits for a computation.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

__all__ = ["RequestFinished", "RequestFailed", "LatestRequestWorker"]


@dataclass(frozen=True)
class RequestFinished:
    """``work(request)`` returned ``result`` and no newer request was submitted meanwhile."""

    request: Any
    result: Any


@dataclass(frozen=True)
class RequestFailed:
    """``work(request)`` raised ``error`` and no newer request was submitted meanwhile."""

    request: Any
    error: BaseException


RequestOutcome = Union[RequestFinished, RequestFailed]


class LatestRequestWorker:
    """Runs ``work(request) -> result`` on one daemon thread for the newest submitted request only.

    Args:
        work: the computation; it runs on the worker thread and must not touch GUI,
            MRML or VTK objects. Exceptions it raises are delivered as :class:`RequestFailed`.
        name: the worker thread's name (shown by debuggers and thread dumps).

    The thread starts with the first :meth:`submit` and lives until :meth:`close`;
    while idle it sleeps on a condition variable and costs nothing.
    """

    def __init__(self, work: Callable[[Any], Any], name: str = "KDSegmentation preview") -> None:
        self._work = work
        self._name = name
        self._condition = threading.Condition()
        self._latest = 0  # sequence number of the newest submitted request (or discard)
        self._pending: Optional[Tuple[int, Any]] = None  # submitted, not started
        self._running: Optional[int] = None  # sequence number being computed
        self._outcome: Optional[RequestOutcome] = None  # newest request's outcome, not yet polled
        self._idle = threading.Event()  # nothing pending and nothing running
        self._idle.set()
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def submit(self, request: Any) -> None:
        """Make ``request`` the one to compute next, replacing any request that has not started.

        Returns at once. A computation already running is not interrupted, but its
        outcome will be dropped, as will an outcome not yet polled.

        Raises:
            RuntimeError: the worker was closed.
        """
        with self._condition:
            if self._closed:
                raise RuntimeError("this LatestRequestWorker was closed; create a new one")
            self._latest += 1
            self._pending = (self._latest, request)
            self._outcome = None
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._condition.notify()

    def discard(self) -> None:
        """Forget every request: the pending one is dropped and no outcome is delivered until the next submit."""
        with self._condition:
            self._latest += 1
            self._pending = None
            self._outcome = None
            if self._running is None:
                self._idle.set()

    @property
    def busy(self) -> bool:
        """A request is waiting or being computed."""
        return not self._idle.is_set()

    def poll(self, yield_seconds: float = 0.0) -> Optional[RequestOutcome]:
        """The newest request's outcome if it is ready and not yet polled, else None.

        Args:
            yield_seconds: while busy, first wait up to this long (GIL released) for the
                worker to become idle, as :meth:`BackgroundTask.poll` does, so that the
                worker's Python code advances in an application whose GUI thread holds the GIL.
        """
        if yield_seconds > 0 and self.busy:
            self._idle.wait(yield_seconds)
        with self._condition:
            outcome, self._outcome = self._outcome, None
            return outcome

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Block until nothing is pending or running (scripts and tests); True when idle."""
        return self._idle.wait(timeout)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Drop pending requests and stop the thread after its current computation.

        Args:
            timeout: seconds to wait for the thread to end (None: do not wait).

        Returns:
            True when no worker thread is left running.
        """
        with self._condition:
            self._closed = True
            self._latest += 1
            self._pending = None
            self._outcome = None
            self._condition.notify_all()
            thread = self._thread
        if thread is None:
            return True
        if timeout is not None:
            thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._pending is None and not self._closed:
                    self._condition.wait()
                if self._closed:
                    self._idle.set()
                    return
                sequence, request = self._pending
                self._pending = None
                self._running = sequence
            try:
                outcome: RequestOutcome = RequestFinished(request, self._work(request))
            except BaseException as exc:  # delivered to the GUI thread, never lost in the worker
                outcome = RequestFailed(request, exc)
            with self._condition:
                self._running = None
                if sequence == self._latest:
                    self._outcome = outcome
                if self._pending is None:
                    self._idle.set()
