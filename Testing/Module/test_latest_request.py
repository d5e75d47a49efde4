"""The live preview's scheduler: only the newest request is computed, stale outcomes are dropped."""

import threading

import pytest

from KDSegmentationLib.slicer_support.latest_request import LatestRequestWorker, RequestFailed, RequestFinished

WAIT = 5.0  # seconds; generous, only reached when the behaviour is broken


class GatedWork:
    """work(request) that records each call and blocks until the test opens that request's gate."""

    def __init__(self) -> None:
        self.calls = []
        self.started = {}
        self.gates = {}
        self._lock = threading.Lock()

    def gate(self, request) -> threading.Event:
        with self._lock:
            return self.gates.setdefault(request, threading.Event())

    def has_started(self, request) -> threading.Event:
        with self._lock:
            return self.started.setdefault(request, threading.Event())

    def __call__(self, request):
        self.calls.append(request)
        self.has_started(request).set()
        assert self.gate(request).wait(WAIT), f"test never released {request!r}"
        if isinstance(request, Exception):
            raise request
        return f"result of {request}"


@pytest.fixture
def work():
    return GatedWork()


@pytest.fixture
def worker(work):
    worker = LatestRequestWorker(work)
    yield worker
    for gate in list(work.gates.values()):
        gate.set()
    assert worker.close(timeout=WAIT)


def test_one_request_is_delivered_once(worker, work):
    work.gate("slice 40").set()
    worker.submit("slice 40")
    assert worker.wait_idle(WAIT)
    assert worker.poll() == RequestFinished("slice 40", "result of slice 40")
    assert worker.poll() is None
    assert not worker.busy


def test_requests_submitted_while_busy_collapse_into_the_newest(worker, work):
    worker.submit("slice 1")
    assert work.has_started("slice 1").wait(WAIT)
    for index in range(2, 30):  # a fast scroll while slice 1 is being computed
        worker.submit(f"slice {index}")
    assert worker.busy
    work.gate("slice 1").set()
    assert work.has_started("slice 29").wait(WAIT)
    assert worker.poll() is None, "the outcome of slice 1 is stale and must not be shown"
    work.gate("slice 29").set()
    assert worker.wait_idle(WAIT)
    assert work.calls == ["slice 1", "slice 29"], "only the newest request may be computed; nothing queues"
    assert worker.poll() == RequestFinished("slice 29", "result of slice 29")


def test_an_unpolled_outcome_is_dropped_when_a_newer_request_arrives(worker, work):
    work.gate("slice 1").set()
    worker.submit("slice 1")
    assert worker.wait_idle(WAIT)
    worker.submit("slice 2")
    assert worker.poll() is None
    work.gate("slice 2").set()
    assert worker.wait_idle(WAIT)
    assert worker.poll().request == "slice 2"


def test_submit_returns_while_a_computation_runs(worker, work):
    worker.submit("slice 1")
    assert work.has_started("slice 1").wait(WAIT)
    submitter = threading.Thread(target=worker.submit, args=("slice 2",))
    submitter.start()
    submitter.join(WAIT)
    assert not submitter.is_alive(), "submit() waited for the running computation"
    assert work.calls == ["slice 1"]


def test_an_error_is_delivered_and_the_worker_goes_on(worker, work):
    error = ValueError("slice outside the volume")
    work.gate(error).set()
    worker.submit(error)
    assert worker.wait_idle(WAIT)
    outcome = worker.poll()
    assert isinstance(outcome, RequestFailed) and outcome.error is error and outcome.request is error
    work.gate("slice 3").set()
    worker.submit("slice 3")
    assert worker.wait_idle(WAIT)
    assert worker.poll() == RequestFinished("slice 3", "result of slice 3")


def test_discard_drops_the_running_and_the_pending_request(worker, work):
    worker.submit("slice 1")
    assert work.has_started("slice 1").wait(WAIT)
    worker.submit("slice 2")
    worker.discard()  # e.g. the preview was switched off
    work.gate("slice 1").set()
    assert worker.wait_idle(WAIT)
    assert worker.poll() is None
    assert work.calls == ["slice 1"]
    work.gate("slice 5").set()
    worker.submit("slice 5")
    assert worker.wait_idle(WAIT)
    assert worker.poll().request == "slice 5"


def test_poll_with_a_yield_returns_the_outcome_as_soon_as_it_is_ready(worker, work):
    worker.submit("slice 7")
    assert work.has_started("slice 7").wait(WAIT)
    threading.Timer(0.05, work.gate("slice 7").set).start()
    outcome = worker.poll(yield_seconds=WAIT)
    assert outcome == RequestFinished("slice 7", "result of slice 7")


def test_poll_does_not_wait_when_idle(worker):
    assert worker.poll(yield_seconds=WAIT) is None  # returns at once: nothing to wait for
    assert not worker.busy


def test_close_stops_the_thread_and_refuses_new_requests(work):
    worker = LatestRequestWorker(work)
    work.gate("slice 1").set()
    worker.submit("slice 1")
    assert worker.close(timeout=WAIT)
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit("slice 2")
    assert worker.poll() is None
    assert not [t for t in threading.enumerate() if t.name == "KDSegmentation preview"]


def test_close_before_any_request_has_no_thread_to_stop(work):
    assert LatestRequestWorker(work).close(timeout=WAIT)
