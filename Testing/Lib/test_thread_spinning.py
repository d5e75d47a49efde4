"""Thread spinning policy: the decision, its load measurement and fallbacks, and that it reaches the session.

Speed is not asserted here (benchmarks/segment_volume.py compares the policies side by
side on an idle and a busy machine); these tests check which choice is made from which
reading, that every platform path falls back to something that works, and that the
choice is what the real ONNX Runtime session is configured with.
"""

import json
import os
import subprocess
import sys

import pytest

from KDSegmentationLib.cli import main
from KDSegmentationLib.errors import EXIT_USAGE
from KDSegmentationLib.inference.onnx_engine import InferenceEngine
from KDSegmentationLib.inference.thread_spinning import (LoadReading, SpinningChoice, choose_spinning,
                                                         measure_other_load, proc_stat_cpu_times, windows_cpu_times)

SPIN_KEY, STOP_KEY = "session.intra_op.allow_spinning", "session.force_spinning_stop"


def _never(*_args):
    raise AssertionError("the load must not be measured for this decision")


# --- the decision -----------------------------------------------------------------------

def test_on_and_off_are_obeyed_without_measuring():
    assert choose_spinning("on", None, cores=2, measure=_never).spinning is True
    assert choose_spinning("off", None, cores=2, measure=_never).spinning is False


def test_auto_spins_only_when_the_inference_threads_have_the_cores_to_themselves():
    idle = choose_spinning("auto", None, cores=2, measure=lambda: LoadReading(0.1, "test"))
    busy = choose_spinning("auto", None, cores=2, measure=lambda: LoadReading(2.0, "test"))
    assert idle.spinning and "0.10 cores busy" in idle.reason and "threads spin" in idle.reason
    assert not busy.spinning and "2.00 cores busy" in busy.reason and "threads sleep" in busy.reason
    # Two threads on eight cores: two busy cores elsewhere still leave them free cores.
    assert choose_spinning("auto", 2, cores=8, measure=lambda: LoadReading(2.0, "test")).spinning
    assert not choose_spinning("auto", 2, cores=8, measure=lambda: LoadReading(6.6, "test")).spinning
    # Half a core of background noise is tolerated, a whole busy core is not.
    assert choose_spinning("auto", None, cores=2, measure=lambda: LoadReading(0.4, "test")).spinning
    assert not choose_spinning("auto", None, cores=2, measure=lambda: LoadReading(1.0, "test")).spinning


def test_auto_with_one_thread_sleeps_without_measuring():
    choice = choose_spinning("auto", 1, cores=2, measure=_never)
    assert choice == SpinningChoice(False, "one inference thread: no other thread to wait for")
    assert not choose_spinning("auto", None, cores=1, measure=_never).spinning


def test_auto_leaves_a_core_to_the_pipeline_thread_working_next_to_the_network():
    # Two inference threads and the overlapping pipeline thread do not fit two cores: sleep, no probe.
    choice = choose_spinning("auto", None, cores=2, measure=_never, neighbour_threads=1)
    assert not choice.spinning and "1 pipeline thread(s)" in choice.reason
    idle = lambda: LoadReading(0.1, "test")  # noqa: E731
    assert choose_spinning("auto", 2, cores=4, measure=idle, neighbour_threads=1).spinning
    busy = choose_spinning("auto", 2, cores=4, measure=lambda: LoadReading(1.6, "test"), neighbour_threads=1)
    assert not busy.spinning and "and 1 pipeline thread(s) on 4 cores" in busy.reason
    assert choose_spinning("auto", 2, cores=4, measure=lambda: LoadReading(1.6, "test")).spinning
    assert choose_spinning("on", None, cores=2, measure=_never, neighbour_threads=1).spinning


def test_auto_sleeps_when_the_load_cannot_be_measured():
    choice = choose_spinning("auto", None, cores=2, measure=lambda: None)
    assert not choice.spinning and "cannot be measured" in choice.reason


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="auto, on, off; got 'fast'"):
        choose_spinning("fast")


# --- the load measurement and its fallbacks ----------------------------------------------

class _Counters:
    """Scripted readings of a CPU-times sampler, this process's CPU time and the clock."""

    def __init__(self, system, own, wall):
        self.system, self.own, self.wall = iter(system), iter(own), iter(wall)

    def measure(self, samplers=None, **kwargs):
        samplers = samplers or (("scripted", lambda: next(self.system)),)
        return measure_other_load(0.1, samplers=samplers, own_cpu=lambda: next(self.own),
                                  clock=lambda: next(self.wall), sleep=lambda s: None, **kwargs)


def test_this_process_own_cpu_time_is_not_counted_as_other_load():
    # 0.15 CPU-s busy machine-wide in 0.1 s, 0.05 of it this process (its CT read): 1 other core.
    counters = _Counters([(10.0, 100.0), (10.15, 100.2)], [1.0, 1.05], [5.0, 5.1])
    reading = counters.measure(loadavg=_never)
    assert reading.busy_cores == pytest.approx(1.0) and reading.source == "scripted over 0.10 s"
    # Only this process busy: no other load (never negative).
    assert _Counters([(10.0, 100.0), (10.1, 100.2)], [1.0, 1.12], [5.0, 5.1]).measure().busy_cores == 0.0


def test_next_sampler_then_load_average_then_nothing():
    counters = _Counters([(0.0, 0.0), (0.2, 0.2)], [0.0, 0.0, 0.0], [0.0, 0.1, 0.2])
    samplers = (("missing", lambda: None), ("second", lambda: next(counters.system)))
    assert counters.measure(samplers).source == "second over 0.10 s"
    unavailable = (("missing", lambda: None),)
    reading = measure_other_load(samplers=unavailable, loadavg=lambda: (1.5, 1.0, 0.5), sleep=lambda s: None)
    assert reading == LoadReading(1.5, "1-minute load average")
    assert measure_other_load(samplers=unavailable, loadavg=None, sleep=lambda s: None) is None

    def broken():
        raise OSError("no load average here")

    assert measure_other_load(samplers=unavailable, loadavg=broken, sleep=lambda s: None) is None
    assert choose_spinning("auto", None, cores=2, measure=lambda: measure_other_load(
        samplers=unavailable, loadavg=None)).spinning is False


def test_proc_stat_sums_the_allowed_cores(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  30 0 10 60 0 0 0 0 0 0\n"
                    "cpu0 20 0 5 20 5 0 0 0 0 0\n"
                    "cpu1 10 0 5 40 0 0 0 0 0 0\nintr 1 2 3\n", encoding="ascii")
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy, total = proc_stat_cpu_times(str(stat), cpus={0})
    assert (busy, total) == pytest.approx((25 / ticks, 50 / ticks))  # iowait counts as idle
    assert proc_stat_cpu_times(str(stat), cpus={0, 1}) == pytest.approx((40 / ticks, 105 / ticks))
    assert proc_stat_cpu_times(str(stat), cpus={7}) is None  # none of the allowed cores listed
    assert proc_stat_cpu_times(str(tmp_path / "missing")) is None
    stat.write_text("cpu0 garbage\n", encoding="ascii")
    assert proc_stat_cpu_times(str(stat), cpus={0}) is None


@pytest.mark.skipif(sys.platform == "win32", reason="checks that the Windows sampler stays out of other systems")
def test_windows_sampler_answers_none_elsewhere():
    assert windows_cpu_times() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_real_measurement_sees_a_cpu_bound_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        reading = measure_other_load(0.3)
    finally:
        busy.kill()
        busy.wait()
    assert reading is not None and reading.source.startswith("/proc/stat over ")
    assert reading.busy_cores >= 0.5  # the child's core (more if the machine is busier)


# --- the choice reaches ONNX Runtime ------------------------------------------------------

def _config(engine, key):
    return engine._session.get_session_options().get_session_config_entry(key)


@pytest.mark.parametrize("policy, expected", [("on", "1"), ("off", "0")])
def test_forced_policy_configures_the_session(plumbing_onnx, policy, expected):
    engine = InferenceEngine(plumbing_onnx, device="cpu", threads=2, spinning=policy)
    assert _config(engine, SPIN_KEY) == expected and engine.spinning is (expected == "1")
    assert _config(engine, STOP_KEY) == "1"  # spinning, where allowed, ends with each run


def test_auto_decision_reaches_the_session(plumbing_onnx):
    asked = []

    def decide(spin):
        def choice(policy, threads):
            asked.append((policy, threads))
            return SpinningChoice(spin, "scripted")
        return choice

    spinning = InferenceEngine(plumbing_onnx, device="cpu", threads=2, spinning_choice=decide(True))
    sleeping = InferenceEngine(plumbing_onnx, device="cpu", threads=2, spinning_choice=decide(False))
    assert asked == [("auto", 2), ("auto", 2)]
    assert _config(spinning, SPIN_KEY) == "1" and spinning.spinning_reason == "scripted"
    assert _config(sleeping, SPIN_KEY) == "0" and not sleeping.spinning


def test_engine_refuses_an_unknown_policy(plumbing_onnx):
    with pytest.raises(ValueError, match="spinning must be one of auto, on, off"):
        InferenceEngine(plumbing_onnx, device="cpu", spinning="always")


def test_cli_option_reaches_the_session_and_the_volumes_json(capsys, plumbing_registry, tmp_path, example_ct):
    import SimpleITK as sitk

    volumes, crop = tmp_path / "v.json", tmp_path / "ct.nii.gz"
    sitk.WriteImage(example_ct[:, :, 60:66], str(crop))  # six real slices
    base = ["--registry", str(plumbing_registry), "segment", str(crop), "-o", str(tmp_path / "seg.nii.gz"),
            "--no-progress", "--device", "cpu", "--volumes-json", str(volumes)]
    assert main(base + ["--thread-spinning", "on", "--threads", "2"]) == 0
    assert json.loads(volumes.read_text(encoding="utf-8"))["thread_spinning"] == {
        "spinning": True, "reason": "thread spinning requested"}
    assert main(base + ["--threads", "1"]) == 0  # default auto: one thread never spins
    assert json.loads(volumes.read_text(encoding="utf-8"))["thread_spinning"] == {
        "spinning": False, "reason": "one inference thread: no other thread to wait for"}
    capsys.readouterr()
    assert main(base + ["--thread-spinning", "sometimes"]) == EXIT_USAGE
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err
