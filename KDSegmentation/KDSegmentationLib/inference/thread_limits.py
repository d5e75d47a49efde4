"""Bound a requested inference thread count by the cores this process may use.

More ONNX Runtime threads than cores only adds contention (64 threads on 2 cores ran
23x slower) and per-thread memory (100000 threads exhausted 6 GB), so a larger
request is lowered to the core count with a warning instead of being obeyed.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

__all__ = ["usable_cores", "bounded_threads"]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def bounded_threads(requested: Optional[int], cores: Optional[int] = None) -> Tuple[Optional[int], Optional[str]]:
    """``requested`` limited to the core count, and a warning when it was lowered.

    Args:
        requested: threads asked for (None: ONNX Runtime's default, one per core).
        cores: available cores (default :func:`usable_cores`).

    Returns:
        (threads to use, warning text or None).

    Raises:
        ValueError: ``requested`` below 1.
    """
    if requested is None:
        return None, None
    if requested < 1:
        raise ValueError(f"threads must be at least 1, got {requested}")
    cores = usable_cores() if cores is None else cores
    if requested <= cores:
        return requested, None
    return cores, (f"{requested} inference threads requested but this computer has {cores} usable core(s); "
                   f"using {cores} (more threads than cores only slow inference down).")
