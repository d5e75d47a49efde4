"""Whether ONNX Runtime's intra-op threads spin (busy-wait) between work items or sleep.

Spinning saves the wake-up of a sleeping thread at every parallel section of a run (a
convolution, a matrix product, ...). ``benchmarks/segment_volume.py`` compares both on
an idle machine and with CPU-bound processes next to it, in one run: on the idle 2-core
development machine spinning ran batches of 8 slices (kdseg's default) 14-26% faster
(batch 4: slower, twice), while two busy processes made the whole ``kdseg segment`` run 30% slower
with spinning threads (2.68 against 2.06 s; inference 1.26 against 0.88 s): a spinning
thread burns the time slice that the thread it waits for needs.

So the engine's default policy, ``"auto"``, measures at session creation how many cores
other processes keep busy and lets threads spin only when every inference thread can
have a core of its own. The threads working next to a call count too: ``segment_image``
prepares and spreads batches while the network runs, and other calls may run at the same
time (``Segmenter.from_registry`` passes them as neighbour threads, see
:mod:`.run_layout`); on the idle 2-core machine, two-thread calls spinning next to the
pipeline's thread made the overlapped run 8% slower (1.00 against 0.93 s in-process for
150 slices of 512 x 512). With the default layout on two cores (two calls on a one-thread session) nothing spins.
Threads that spin stop spinning as soon as a run returns
(``session.force_spinning_stop``), so they never compete with the pipeline's own work
between batches. ``"on"`` and ``"off"`` force the choice (``kdseg segment --thread-spinning``).

How busy the machine is, by platform (the first that answers):

1. Linux: ``/proc/stat`` (the cores this process may run on) sampled over 50 ms, minus
   this process's own CPU time in that interval (its other threads are
   reading the CT meanwhile).
2. Windows: ``GetSystemTimes`` over the same interval, minus this process's own CPU time.
3. macOS and other Unix: the 1-minute load average (``os.getloadavg``).

If none answers, threads sleep: the choice that never hurts much. On an oversubscribed
machine the counters cannot exceed the cores, so the reading is a lower bound of the other
processes' demand; it is still above the threshold whenever they keep a core busy.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Tuple

from .thread_limits import usable_cores

__all__ = ["SPINNING_POLICIES", "SpinningChoice", "LoadReading", "CpuTimes", "proc_stat_cpu_times",
           "windows_cpu_times", "measure_other_load", "choose_spinning"]

SPINNING_POLICIES = ("auto", "on", "off")
PROBE_SECONDS = 0.05
"""How long the CPU counters are sampled: 5 clock ticks per core on Linux, enough to tell a free core
from a busy one; spent on the model-loading thread while the CT is read (``kdseg segment``)."""
SPARE_CORE_MARGIN = 0.5
"""Busy cores other processes may use beyond what the inference threads leave free (noise, daemons)."""

# () -> (busy CPU-seconds, all CPU-seconds) summed over every core since boot, or None where unavailable.
CpuTimes = Callable[[], Optional[Tuple[float, float]]]


@dataclass(frozen=True)
class LoadReading:
    """How many cores other processes keep busy, and how that was measured.

    Args:
        busy_cores: cores' worth of CPU used by other processes (>= 0).
        source: one phrase naming the measurement, e.g. "/proc/stat over 0.10 s".
    """

    busy_cores: float
    source: str


@dataclass(frozen=True)
class SpinningChoice:
    """The decision and one line saying why (logged with ``kdseg -v``).

    Args:
        spinning: intra-op threads busy-wait during a run instead of sleeping.
        reason: why, with the measured load when there was one.
    """

    spinning: bool
    reason: str


def proc_stat_cpu_times(path: str = "/proc/stat", cpus: Optional[Iterable[int]] = None
                        ) -> Optional[Tuple[float, float]]:
    """Busy and total CPU-seconds of the cores this process may use, from Linux's ``/proc/stat``.

    Each ``cpuN`` line is ``cpuN user nice system idle iowait irq softirq steal ...`` in
    clock ticks; idle + iowait is the time no process wanted the core. Steal (time the
    hypervisor gave another guest) counts as busy: those cycles are not ours either.

    Args:
        path: the file (a copy in tests).
        cpus: core numbers to sum (default: this process's CPU affinity, else every core).

    Returns:
        (busy, total) seconds since boot, or None where the file is missing or unreadable.
    """
    if cpus is None and hasattr(os, "sched_getaffinity"):
        try:
            cpus = os.sched_getaffinity(0)
        except OSError:
            cpus = None
    wanted = None if cpus is None else {f"cpu{n}" for n in cpus}
    busy = total = 0
    found = False
    try:
        per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        with open(path, encoding="ascii") as handle:
            for line in handle:
                fields = line.split()
                if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
                    continue
                if wanted is not None and fields[0] not in wanted:
                    continue
                ticks = [int(value) for value in fields[1:9]]
                if len(ticks) < 5:
                    return None
                idle = ticks[3] + ticks[4]
                busy += sum(ticks) - idle
                total += sum(ticks)
                found = True
    except (OSError, ValueError):
        return None
    if not found or per_second <= 0:
        return None
    return busy / per_second, total / per_second


def windows_cpu_times() -> Optional[Tuple[float, float]]:
    """Busy and total CPU-seconds of all cores from Windows' ``GetSystemTimes`` (None elsewhere).

    Kernel time includes idle time there, so busy = kernel + user - idle (100 ns units).
    """
    if sys.platform != "win32":
        return None
    try:
        import ctypes
        from ctypes import wintypes

        idle, kernel, user = wintypes.FILETIME(), wintypes.FILETIME(), wintypes.FILETIME()
        if not ctypes.windll.kernel32.GetSystemTimes(ctypes.byref(idle), ctypes.byref(kernel), ctypes.byref(user)):
            return None
    except (ImportError, AttributeError, OSError):
        return None

    def seconds(value) -> float:
        return ((value.dwHighDateTime << 32) | value.dwLowDateTime) / 1e7

    total = seconds(kernel) + seconds(user)
    return total - seconds(idle), total


def measure_other_load(seconds: float = PROBE_SECONDS, samplers: Tuple[Tuple[str, CpuTimes], ...] = (
        ("/proc/stat", proc_stat_cpu_times), ("GetSystemTimes", windows_cpu_times)),
        loadavg: Optional[Callable[[], Tuple[float, float, float]]] = getattr(os, "getloadavg", None),
        own_cpu: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep) -> Optional[LoadReading]:
    """Cores other processes keep busy right now; None when this platform offers no measurement.

    Args:
        seconds: sampling interval of the CPU counters.
        samplers: ``(name, CpuTimes)`` tried in order; the first that answers twice is used.
        loadavg: fallback where no sampler answers (``os.getloadavg``: includes this process
            and averages over a minute), or None.
        own_cpu / clock / sleep: this process's CPU seconds (all threads), a monotonic clock
            and a sleep; injectable for tests.

    Returns:
        A :class:`LoadReading`, or None.
    """
    for name, sample in samplers:
        first, own_first, start = sample(), own_cpu(), clock()
        if first is None:
            continue
        sleep(seconds)
        second, own_second, wall = sample(), own_cpu(), clock() - start
        if second is None or wall <= 0:
            continue
        others = (second[0] - first[0]) - (own_second - own_first)
        return LoadReading(max(others, 0.0) / wall, f"{name} over {wall:.2f} s")
    if loadavg is not None:
        try:
            one_minute = float(loadavg()[0])
        except (OSError, ValueError, IndexError, TypeError):
            return None
        return LoadReading(max(one_minute, 0.0), "1-minute load average")
    return None


def choose_spinning(policy: str = "auto", threads: Optional[int] = None, cores: Optional[int] = None,
                    measure: Callable[[], Optional[LoadReading]] = measure_other_load,
                    neighbour_threads: int = 0) -> SpinningChoice:
    """Decide whether the inference threads spin.

    Args:
        policy: "auto" (spin when the inference threads have the cores to themselves),
            "on" or "off".
        threads: intra-op threads of the session (None: ONNX Runtime's default, at most one
            per usable core, counted as all usable cores).
        cores: usable cores (default :func:`~.thread_limits.usable_cores`).
        measure: the load measurement (default :func:`measure_other_load`); called for
            "auto" only when the inference threads and ``neighbour_threads`` fit the cores.
        neighbour_threads: threads of this process that work while a run is in progress
            (the pipeline's own thread when it overlaps the network with its other stages):
            "auto" leaves each of them a core.

    Returns:
        A :class:`SpinningChoice`.

    Raises:
        ValueError: unknown ``policy``.
    """
    if policy not in SPINNING_POLICIES:
        raise ValueError(f"thread spinning policy must be one of {', '.join(SPINNING_POLICIES)}; got {policy!r}")
    if policy == "on":
        return SpinningChoice(True, "thread spinning requested")
    if policy == "off":
        return SpinningChoice(False, "thread spinning switched off")
    cores = usable_cores() if cores is None else cores
    wanted = min(threads or cores, cores)
    if wanted <= 1:
        return SpinningChoice(False, "one inference thread: no other thread to wait for")
    if wanted + neighbour_threads > cores:
        # A spinning thread would burn the core the neighbour needs (measured: overlapped runs 8% slower).
        return SpinningChoice(False, f"{wanted} inference threads and {neighbour_threads} pipeline thread(s) working "
                                     f"next to them on {cores} cores: threads sleep")
    reading = measure()
    if reading is None:
        return SpinningChoice(False, "the machine's load cannot be measured here, so threads sleep")
    allowed = cores - wanted - neighbour_threads + SPARE_CORE_MARGIN
    spinning = reading.busy_cores < allowed
    verdict = "free" if spinning else "busy"
    neighbours = f" and {neighbour_threads} pipeline thread(s)" if neighbour_threads else ""
    return SpinningChoice(spinning, f"{reading.busy_cores:.2f} cores busy with other work ({reading.source}); "
                                    f"{wanted} inference threads{neighbours} on {cores} cores: machine {verdict}, "
                                    f"threads {'spin' if spinning else 'sleep'}")
