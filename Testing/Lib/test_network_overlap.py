"""segment_image with its network calls on worker threads: same labels, no thread left behind, errors surface.

The overlapped run reorders the per-batch work in time only; these tests compare it with
the step-after-step run on real CT, cancel it part-way, make an engine fail in the third
call (two calls at a time, as on a multi-core CPU), and check the wall-time accounting of
overlapping stages and the thread layout on known numbers.
"""

import itertools
import os
import threading

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.errors import CancelledError
from KDSegmentationLib.inference.network_calls import WORKER_NAME
from KDSegmentationLib.inference.pipeline import SegmentationOptions, Segmenter, segment_image
from KDSegmentationLib.inference.run_layout import RunLayout, run_layout
from KDSegmentationLib.inference.stage_clock import StageClock
from KDSegmentationLib.progress import CancelToken, Stage


@pytest.fixture(scope="module")
def shipped_segmenter():
    """The bundled default model (physical-size grid, the path users run)."""
    return Segmenter.from_registry(device="cpu", allow_download=False)


@pytest.fixture(scope="module")
def real_crop(example_ct):
    """20 real abdominal slices: several batches of 3 with a partial last one."""
    return example_ct[:, :, 46:66]


class CountingEngine:
    """The real engine, counting calls and failing (with its own error type) in the given call."""

    class Failure(RuntimeError):
        pass

    def __init__(self, engine, fail_in_call=None):
        self.engine, self.fail_in_call, self.calls = engine, fail_in_call, 0
        self.device = engine.device
        self._numbers = itertools.count(1)  # atomic under the GIL: calls come from two threads

    def run(self, batch):
        number = self.calls = next(self._numbers)
        if number == self.fail_in_call:
            raise CountingEngine.Failure(f"engine failed in call {number}")
        return self.engine.run(batch)


def _no_worker_left():
    return not [t for t in threading.enumerate() if t.name.startswith(WORKER_NAME)]


def test_overlapped_labels_and_volumes_equal_the_sequential_run(real_crop, shipped_segmenter):
    runs = {overlap: segment_image(real_crop, shipped_segmenter,
                                   SegmentationOptions(batch_size=3, overlap_network=overlap))
            for overlap in (False, True)}
    sequential, overlapped = runs[False], runs[True]
    labels = sitk.GetArrayFromImage(overlapped.labels)
    assert len(np.unique(labels)) > 2  # the trained model finds organs in this crop
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(sequential.labels))
    assert overlapped.volumes_ml == sequential.volumes_ml
    assert overlapped.overlapped and not sequential.overlapped
    for result in runs.values():
        assert list(result.timings) == list(result.busy) == ["preprocess", "infer", "postprocess"]
        assert all(result.timings[s] <= result.busy[s] + 1e-9 for s in result.timings)
    assert sequential.busy == sequential.timings


def test_progress_in_slice_order_when_overlapped(real_crop, plumbing_segmenter):
    events = []
    segment_image(real_crop, plumbing_segmenter, SegmentationOptions(batch_size=6, overlap_network=True),
                  progress=events.append)
    inferring = [e for e in events if e.stage == Stage.INFERRING]
    assert [e.current for e in inferring] == [0, 6, 12, 18, 20]
    assert [e.message for e in inferring][-1] == "slice 20 of 20"
    assert all(e.total == 20 for e in inferring)
    first_post = next(i for i, e in enumerate(events) if e.stage == Stage.POSTPROCESSING)
    assert all(e.stage != Stage.INFERRING for e in events[first_post:])


def test_cancel_mid_run_leaves_no_thread_and_stops_inference(real_crop, plumbing_segmenter):
    threads_before = threading.active_count()
    engine = CountingEngine(plumbing_segmenter.engine)
    token = CancelToken()

    def cancel_after_two_batches(event):
        if event.stage == Stage.INFERRING and event.current >= 4:
            token.cancel()

    with pytest.raises(CancelledError):
        segment_image(real_crop, Segmenter(plumbing_segmenter.card, engine, concurrent_runs=2),
                      SegmentationOptions(batch_size=2, overlap_network=True),
                      progress=cancel_after_two_batches, cancel=token)
    assert threading.active_count() == threads_before and _no_worker_left()
    assert engine.calls <= 4  # of 10 batches: two spread, at most two more submitted ahead


def test_engine_error_in_third_batch_reaches_the_caller_unchanged(real_crop, plumbing_segmenter):
    threads_before = threading.active_count()
    engine = CountingEngine(plumbing_segmenter.engine, fail_in_call=3)
    outcome = {}

    def run():  # on a thread of its own, as in Slicer, so that a hang fails the test instead of blocking it
        try:
            segment_image(real_crop, Segmenter(plumbing_segmenter.card, engine, concurrent_runs=2),
                          SegmentationOptions(batch_size=2, overlap_network=True))
        except BaseException as exc:  # noqa: BLE001 - the test inspects whatever arrives
            outcome["error"] = exc

    caller = threading.Thread(target=run)
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive(), "segment_image hung after the engine failed"
    error = outcome.get("error")
    assert type(error) is CountingEngine.Failure and str(error) == "engine failed in call 3"
    assert engine.calls <= 5 and threading.active_count() == threads_before and _no_worker_left()


def test_overlap_by_default_only_with_cores_to_spare(monkeypatch, real_crop, plumbing_segmenter):
    from KDSegmentationLib.inference import pipeline

    options = SegmentationOptions(postprocess=False)
    for cores, overlapped in ((1, False), (2, True)):
        monkeypatch.setattr(pipeline, "usable_cores", lambda: cores)
        assert segment_image(real_crop[:, :, :2], plumbing_segmenter, options).overlapped is overlapped


def test_threads_split_into_at_most_two_concurrent_calls():
    assert run_layout(None, cores=2) == RunLayout(2, 1)
    assert run_layout(1, cores=8) == RunLayout(1, 1)
    assert run_layout(None, cores=8) == RunLayout(2, 7) and run_layout(8).threads == 8
    assert run_layout(3) == RunLayout(2, 2) and run_layout(3).threads == 3
    with pytest.raises(ValueError, match="at least 1"):
        run_layout(0)


def _os_threads():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts OS threads through Linux's /proc")
def test_concurrent_calls_share_the_session_pool_so_the_threads_asked_for_are_the_threads_that_work(
        plumbing_registry):
    """A session of T intra-op threads starts T - 1 pool threads and no more for calls running at once: k calls
    compute on k + T - 1 threads. (Sized as k x T per call, --threads 8 kept 5 threads busy.)"""
    from KDSegmentationLib.inference.onnx_engine import InferenceEngine
    from KDSegmentationLib.weights.model_registry import load_registry

    card = load_registry(plumbing_registry).get(None)

    def engine_of(threads):
        return InferenceEngine(plumbing_registry.parent / card.file, device="cpu", threads=threads, spinning="off",
                               input_name=card.input.input_name, output_name=card.input.output_name)

    engine_of(1)  # ONNX Runtime's first session also starts the process-wide threads it keeps
    before = _os_threads()
    engine = engine_of(4)
    assert _os_threads() - before == 3  # the pool: 4 intra-op threads counting the calling thread
    batch = np.zeros((2, 1, card.input.height, card.input.width), np.float32)
    finished, release = threading.Barrier(3), threading.Event()

    def call():
        engine.run(batch)
        finished.wait()
        release.wait()  # keep the caller alive while the threads are counted

    callers = [threading.Thread(target=call) for _ in range(2)]
    for caller in callers:
        caller.start()
    finished.wait()
    assert _os_threads() - before == 3 + 2  # two calls ran at once: no thread besides the pool and the callers
    release.set()
    for caller in callers:
        caller.join()
    for threads in (1, 2, 3, 4, 8):
        segmenter = Segmenter.from_registry(device="cpu", threads=threads, registry=plumbing_registry,
                                            allow_download=False, spinning="off")
        session = segmenter.engine._session.get_session_options().intra_op_num_threads
        assert segmenter.concurrent_runs + session - 1 == threads, (threads, segmenter.concurrent_runs, session)


def test_stage_clock_partitions_the_wall_time_of_overlapping_stages():
    clock = StageClock()
    for start, end in ((1.0, 3.0), (4.0, 6.0)):  # network calls
        clock.add("infer", start, end)
    clock.add("preprocess", 0.0, 2.0)  # half overlapped
    clock.add("preprocess", 3.0, 3.5)  # between calls: exposed
    clock.add("postprocess", 2.5, 4.5)  # overlaps the end of one call and the start of the next
    clock.add("postprocess", 5.0, 5.5)  # inside a call: hidden
    assert clock.busy() == {"preprocess": 2.5, "infer": 4.0, "postprocess": 2.5}
    assert clock.exposed() == pytest.approx({"preprocess": 1.5, "infer": 4.0, "postprocess": 1.0})
    # Concurrent calls: the network's wall time is their union, its busy time their sum.
    clock.add("infer", 5.0, 7.0)
    assert clock.busy()["infer"] == 6.0 and clock.exposed()["infer"] == pytest.approx(5.0)
    assert clock.exposed()["postprocess"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown stage 'read'"):
        clock.add("read", 0.0, 1.0)
