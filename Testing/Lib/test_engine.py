"""ONNX Runtime engine: device choice that verifies CUDA really works, clear failures."""

import numpy as np
import pytest

from KDSegmentationLib.engine import InferenceEngine, probe_cuda
from KDSegmentationLib.errors import DeviceError, WeightsError


def test_cpu_engine_runs_batches(untrained_student_onnx):
    engine = InferenceEngine(untrained_student_onnx, device="cpu", threads=1)
    out = engine.run(np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32))
    assert out.shape == (3, 9, 64, 64) and out.dtype == np.float32
    assert engine.device == "cpu" and engine.providers == ["CPUExecutionProvider"]


def test_auto_falls_back_to_cpu_with_the_real_reason(untrained_student_onnx, caplog):
    # This machine has no GPU: whatever onnxruntime build is installed, the real probe fails.
    session, reason = probe_cuda(untrained_student_onnx, 1)
    assert session is None and reason
    with caplog.at_level("INFO", logger="KDSegmentationLib"):
        engine = InferenceEngine(untrained_student_onnx, device="auto")
    assert engine.device == "cpu"
    assert reason in engine.device_reason
    assert any(reason in r.getMessage() for r in caplog.records)


def test_cuda_without_gpu_fails_clearly(untrained_student_onnx):
    with pytest.raises(DeviceError, match="--device cpu"):
        InferenceEngine(untrained_student_onnx, device="cuda")


def test_auto_uses_a_session_the_probe_verified(untrained_student_onnx):
    import onnxruntime as ort

    verified = ort.InferenceSession(str(untrained_student_onnx), providers=["CPUExecutionProvider"])
    engine = InferenceEngine(untrained_student_onnx, device="auto", probe=lambda path, threads: (verified, ""))
    assert engine.device == "cuda" and engine._session is verified


def test_bad_device_and_corrupt_model(tmp_path, untrained_student_onnx):
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        InferenceEngine(untrained_student_onnx, device="gpu")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(WeightsError, match="bad.onnx"):
        InferenceEngine(bad, device="cpu")
