"""Run a blocking call (an ITK read) so that Ctrl-C still stops the command at once.

Python delivers Ctrl-C (SIGINT) to the main thread only between bytecodes, so a
long C++ read holds it back until the read returns (or forever, on a stalled
network mount). The call runs on a daemon worker thread instead while the main
thread waits in short, interruptible steps: KeyboardInterrupt reaches the command
immediately and the worker is abandoned (the process exits without waiting for it).
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

__all__ = ["call_interruptibly"]

T = TypeVar("T")
_POLL_SECONDS = 0.1


def call_interruptibly(function: Callable[[], T], name: str = "kdseg-read") -> T:
    """Return ``function()``, run on a worker thread when called from the main thread.

    Args:
        function: the blocking call, without arguments.
        name: the worker thread's name (shown in debuggers).

    Returns:
        What ``function`` returned; its exception is re-raised in the caller.

    Raises:
        KeyboardInterrupt: Ctrl-C while waiting (the worker keeps running detached).
    """
    if threading.current_thread() is not threading.main_thread():
        return function()  # only the main thread receives Ctrl-C; a worker just calls
    outcome = {}

    def work() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(_POLL_SECONDS)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
