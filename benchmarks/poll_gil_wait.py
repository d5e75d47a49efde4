"""How long the module's poll should wait with the GIL released: GUI blocking vs worker speed.

    python benchmarks/poll_gil_wait.py [--slices 40] [--repeats 2] [--waits 0,2,5,10,20] [--ticks 50]
                                       [--pairs 50/20,50/5,25/5]   # tick/wait pairs instead of the grid

In Slicer the main thread holds Python's GIL while Qt is idle (PythonQt releases it only
while Python runs), so the worker's Python code advances only when the main thread lets
go. The module's 50 ms timer calls ``BackgroundTask.poll(yield_seconds=w)``, which waits
up to ``w`` with the GIL released. This script reproduces that: the main thread holds the
GIL for ``50 ms - w`` per tick (a ctypes ``PyDLL`` call into libc ``usleep``, which does
not release it, like Qt's idle loop), then polls. The worker segments the first slices of
the bundled sample CT with the bundled model on one thread, exactly the module's work
function. For each wait it prints the worker's time relative to a free-running baseline
(main thread asleep, GIL free) and how long each poll blocked the GUI thread (the wait
plus re-taking the GIL). Configurations run in a shuffled order in each repeat. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import statistics
import sys
import time

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.inference.pipeline import SegmentationOptions, Segmenter
from KDSegmentationLib.imaging.slicer_geometry import ijk_to_ras_from_image
from KDSegmentationLib.resources import sample_ct_path
from KDSegmentationLib.slicer_support.background_task import BackgroundTask
from KDSegmentationLib.slicer_support.module_segmentation import segment_volume_array

_LIBC = ctypes.PyDLL(None)  # PyDLL: calls keep the GIL, as Qt's event loop does in Slicer


def _hold_gil(seconds: float) -> None:
    if seconds > 0:
        _LIBC.usleep(int(seconds * 1e6))


def run_once(work, tick: float, wait: float | None):
    """(worker seconds, [poll block seconds]) with GUI-style polling every ``tick`` seconds, or
    free-running when wait is None."""
    task = BackgroundTask(work)
    started = time.perf_counter()
    task.start()
    blocks, messages = [], []
    while task.running:
        if wait is None:
            time.sleep(tick)
            continue
        _hold_gil(tick - wait)
        poll_start = time.perf_counter()
        messages += task.poll(yield_seconds=wait)
        blocks.append(time.perf_counter() - poll_start)
    elapsed = time.perf_counter() - started
    messages += task.poll()
    assert messages and type(messages[-1]).__name__ == "TaskFinished", messages[-1:]
    return elapsed, blocks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--waits", default="0,2,5,10,20", help="milliseconds, comma-separated")
    parser.add_argument("--ticks", default="50", help="timer intervals in milliseconds, comma-separated")
    parser.add_argument("--pairs", default=None, help="tick/wait pairs in ms, e.g. 50/20,25/5 (overrides the grid)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval in milliseconds (default: Python's 5 ms)")
    args = parser.parse_args(argv)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1000)
    waits = [float(w) / 1000 for w in args.waits.split(",")]
    ticks = [float(t) / 1000 for t in args.ticks.split(",")]

    ct = sitk.ReadImage(str(sample_ct_path()))[:, :, :args.slices]
    array, matrix = sitk.GetArrayFromImage(ct), ijk_to_ras_from_image(ct)
    segmenter = Segmenter.from_registry(device="cpu", threads=1, allow_download=False)

    def work(progress, cancel):
        return segment_volume_array(array, matrix, segmenter, SegmentationOptions(), progress, cancel)

    work(lambda event: None, None)  # warm-up (graph optimisation, caches)
    print(f"switch interval {sys.getswitchinterval() * 1000:.0f} ms, "
          f"{args.slices} slices, model {segmenter.card.id}, 1 thread, {args.repeats} repeats, shuffled")
    if args.pairs:
        pairs = [tuple(float(v) / 1000 for v in pair.split("/")) for pair in args.pairs.split(",")]
    else:
        pairs = [(tick, wait) for tick in ticks for wait in waits if wait < tick]
    configs = [(pairs[0][0], None)] + pairs
    times = {c: [] for c in configs}
    blocks = {c: [] for c in configs}
    order = random.Random(0)
    for _ in range(args.repeats):
        for config in order.sample(configs, len(configs)):  # shuffled: load drifts on a shared machine
            elapsed, polls = run_once(work, *config)
            times[config].append(elapsed)
            blocks[config].extend(polls)
    free = statistics.median(times[configs[0]])
    print(f"{'tick':>6} {'poll wait':>10} {'worker s':>9} {'vs free':>8} {'GUI block/tick ms: median':>26} "
          f"{'p95':>6} {'max':>6} {'GUI blocked %':>14}")
    print(f"{'':>6} {'free':>10} {free:9.2f} {1.0:8.2f}")
    for tick, wait in configs[1:]:
        median = statistics.median(times[(tick, wait)])
        ms = np.array(blocks[(tick, wait)]) * 1000
        print(f"{tick * 1000:4.0f}ms {wait * 1000:8.0f}ms {median:9.2f} {median / free:8.2f} {np.median(ms):26.1f} "
              f"{np.percentile(ms, 95):6.1f} {ms.max():6.1f} {100 * ms.mean() / (tick * 1000):14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
