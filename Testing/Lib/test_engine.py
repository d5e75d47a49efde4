"""ONNX Runtime engine: device choice that verifies CUDA really works, clear failures.

This machine has no GPU and the CPU build of onnxruntime. The real CUDA probe is run
as is (it must refuse CUDA with a reason); the onnxruntime-gpu-without-GPU case is
reproduced by telling the probe that CUDA is listed, so that ONNX Runtime's real silent
fallback to the CPU is what the probe has to catch. No test makes CUDA look working.
"""

import logging
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from KDSegmentationLib.inference.onnx_engine import CPU_PROVIDER, CUDA_PROVIDER, InferenceEngine, probe_cuda, select_device
from KDSegmentationLib.errors import DeviceError, WeightsError

GPU_BUILD = CUDA_PROVIDER in ort.get_available_providers()


def _slices(n, size, seed=0):
    return np.random.default_rng(seed).random((n, 1, size, size), dtype=np.float32)


def test_cpu_engine_runs_batches_and_batching_does_not_change_results(plumbing_onnx, plumbing_size):
    size = plumbing_size
    engine = InferenceEngine(plumbing_onnx, device="cpu", threads=1)
    batch = _slices(4, size)
    out = engine.run(batch)
    assert out.shape == (4, 9, size, size) and out.dtype == np.float32
    assert engine.device == "cpu" and engine.providers == [CPU_PROVIDER]
    assert engine.device_reason == "CPU requested"
    assert engine.input_shape == (1, size, size)
    one_by_one = np.concatenate([engine.run(batch[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(out, one_by_one, rtol=1e-4, atol=1e-4)
    assert not np.allclose(out[0], out[1])  # different slices, different logits


def test_threads_set_intra_op_threads(plumbing_onnx):
    engine = InferenceEngine(plumbing_onnx, device="cpu", threads=2)
    assert engine._session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ValueError, match="threads"):
        InferenceEngine(plumbing_onnx, device="cpu", threads=0)


def test_run_rejects_batches_the_graph_cannot_take(plumbing_onnx, plumbing_size):
    engine = InferenceEngine(plumbing_onnx, device="cpu", threads=1)
    with pytest.raises(ValueError, match=rf"\(N, 1, {plumbing_size}, {plumbing_size}\)"):
        engine.run(np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="N, channels, height, width"):
        engine.run(np.zeros((1, plumbing_size, plumbing_size), np.float32))


# --- the CUDA probe -------------------------------------------------------------------

@pytest.mark.skipif(GPU_BUILD, reason="onnxruntime-gpu is installed; this checks the CPU-only build")
def test_real_probe_refuses_cuda_on_the_cpu_build(plumbing_onnx):
    session, reason = probe_cuda(plumbing_onnx, 1)
    assert session is None
    assert "no CUDA provider" in reason and ort.__version__ in reason


@pytest.mark.skipif(GPU_BUILD, reason="onnxruntime-gpu is installed; the silent fallback needs a CPU-only build")
def test_probe_catches_onnxruntime_silently_falling_back_to_cpu(plumbing_onnx):
    # What onnxruntime-gpu does on a machine without a GPU: CUDA is listed, the session
    # is created anyway and quietly runs on the CPU. The session here is a real one.
    session, reason = probe_cuda(plumbing_onnx, 1,
                                 available_providers=[CUDA_PROVIDER, CPU_PROVIDER])
    assert session is None
    assert "fell back to CPUExecutionProvider" in reason


class _ClaimsCuda:
    """Stand-in for a session that reports CUDA; it delegates to a real CPU session.

    Used only to check wiring (which session the engine keeps, what the probe does
    when the first inference fails); the tests never conclude from it that CUDA works.
    """

    def __init__(self, path, sess_options=None, providers=None):
        self._inner = ort.InferenceSession(str(path), providers=[CPU_PROVIDER])

    def get_providers(self):
        return [CUDA_PROVIDER, CPU_PROVIDER]

    def get_inputs(self):
        return self._inner.get_inputs()

    def get_outputs(self):
        return self._inner.get_outputs()

    def run(self, outputs, feed):
        return self._inner.run(outputs, feed)


class _ClaimsCudaFirstRunFails(_ClaimsCuda):
    def run(self, outputs, feed):
        raise RuntimeError("CUDA failure 209: no kernel image is available for execution on the device\nmore")


def test_probe_requires_a_first_inference_to_succeed(plumbing_onnx):
    session, reason = probe_cuda(plumbing_onnx, 1, available_providers=[CUDA_PROVIDER, CPU_PROVIDER],
                                 session_factory=_ClaimsCudaFirstRunFails)
    assert session is None
    assert reason == "a test inference on CUDA failed (CUDA failure 209: no kernel image is available for " \
                     "execution on the device)"


def test_probe_reports_a_session_that_cannot_be_created(plumbing_onnx):
    def factory(*args, **kwargs):
        raise RuntimeError("libcudnn.so.9: cannot open shared object file")

    session, reason = probe_cuda(plumbing_onnx, 1, available_providers=[CUDA_PROVIDER, CPU_PROVIDER],
                                 session_factory=factory)
    assert session is None and "libcudnn.so.9" in reason


# --- the device decision --------------------------------------------------------------

@pytest.mark.parametrize("requested, works, expected", [
    ("auto", True, "cuda"),
    ("auto", False, "cpu"),
    ("cuda", True, "cuda"),
    ("cpu", True, "cpu"),
    ("cpu", False, "cpu"),
])
def test_select_device(requested, works, expected):
    device, reason = select_device(requested, works, "" if works else "no GPU here")
    assert device == expected
    if requested == "auto" and not works:
        assert reason == "CUDA not used: no GPU here"


def test_select_device_refuses_cuda_that_does_not_work():
    with pytest.raises(DeviceError) as info:
        select_device("cuda", False, "no GPU here")
    assert "no GPU here" in info.value.message
    assert "onnxruntime-gpu" in info.value.hint and "--device cpu" in info.value.hint
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        select_device("gpu", True, "")


# --- the engine's use of the probe ----------------------------------------------------

def test_auto_falls_back_to_cpu_with_one_log_line_giving_the_reason(plumbing_onnx, plumbing_size, caplog):
    _, reason = probe_cuda(plumbing_onnx, 1)
    assert reason  # no working GPU on this machine, whatever build is installed
    with caplog.at_level(logging.INFO, logger="KDSegmentationLib"):
        engine = InferenceEngine(plumbing_onnx, device="auto", threads=1)
    assert engine.device == "cpu" and engine.providers == [CPU_PROVIDER]
    assert engine.device_reason == f"CUDA not used: {reason}"
    lines = [r.getMessage() for r in caplog.records if r.name == "KDSegmentationLib"]
    assert lines == [f"Inference on CPU: CUDA not used: {reason}"]
    assert engine.run(_slices(1, plumbing_size)).shape == (1, 9, plumbing_size, plumbing_size)


def test_cuda_on_this_machine_fails_clearly(plumbing_onnx):
    with pytest.raises(DeviceError) as info:
        InferenceEngine(plumbing_onnx, device="cuda")
    text = str(info.value)
    assert "CUDA was requested but cannot be used" in text
    assert "onnxruntime-gpu" in text and "--device cpu" in text
    assert info.value.exit_code == 6


def test_engine_does_not_take_a_probe_session_that_is_not_on_cuda(plumbing_onnx):
    cpu_session = ort.InferenceSession(str(plumbing_onnx), providers=[CPU_PROVIDER])
    engine = InferenceEngine(plumbing_onnx, device="auto", probe=lambda path, threads: (cpu_session, ""))
    assert engine.device == "cpu"
    assert "CPUExecutionProvider" in engine.device_reason
    with pytest.raises(DeviceError, match="session running on CPUExecutionProvider"):
        InferenceEngine(plumbing_onnx, device="cuda", probe=lambda path, threads: (cpu_session, ""))


def test_engine_keeps_the_session_the_probe_verified(plumbing_onnx):
    calls = []

    def probe(path, threads):
        calls.append((path, threads))
        return _ClaimsCuda(path), ""

    engine = InferenceEngine(plumbing_onnx, device="cuda", threads=3, probe=probe)
    assert calls == [(plumbing_onnx, 3)]
    assert engine.device == "cuda" and engine.providers[0] == CUDA_PROVIDER
    assert engine.device_reason == "CUDA test inference succeeded"
    assert isinstance(engine._session, _ClaimsCuda)


# --- bad requests and bad files -------------------------------------------------------

def test_bad_device_missing_and_corrupt_model(tmp_path, plumbing_onnx):
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        InferenceEngine(plumbing_onnx, device="gpu")
    with pytest.raises(WeightsError, match="does not exist"):
        InferenceEngine(tmp_path / "absent.onnx", device="cpu")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    for device in ("cpu", "auto", "cuda"):  # a corrupt file is a weights problem, never a GPU one
        with pytest.raises(WeightsError, match="bad.onnx") as info:
            InferenceEngine(bad, device=device)
        assert "kdseg download" in info.value.hint


def test_tensor_names_must_match_the_graph(tmp_path, plumbing_onnx):
    model = tmp_path / "m.onnx"
    shutil.copyfile(plumbing_onnx, model)
    with pytest.raises(WeightsError, match="no input named 'input'.*image"):
        InferenceEngine(model, device="cpu", input_name="input")
    with pytest.raises(WeightsError, match="no output named 'probs'.*logits"):
        InferenceEngine(model, device="cpu", output_name="probs")
