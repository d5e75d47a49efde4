"""ONNX Runtime inference session with honest device selection.

``onnxruntime-gpu`` lists the CUDA provider even on machines without a usable GPU,
and a session created with it may silently fall back to the CPU. So CUDA counts as
available only when a CUDA session really runs a first inference and still reports
CUDA as its provider.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from .errors import DeviceError, WeightsError

__all__ = ["DEVICES", "InferenceEngine", "probe_cuda"]

DEVICES = ("auto", "cpu", "cuda")
_log = logging.getLogger("KDSegmentationLib")

CudaProbe = Callable[[Path, Optional[int]], Tuple[Optional[object], str]]


def _session_options(threads: Optional[int]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


def _zero_input(session) -> dict:
    feed = {}
    for node in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in node.shape]
        feed[node.name] = np.zeros(shape, dtype=np.float32)
    return feed


def probe_cuda(model_path: Path, threads: Optional[int]) -> Tuple[Optional[object], str]:
    """Try a CUDA session with one real inference.

    Returns:
        (session, reason): the working CUDA session and "" — or None and why CUDA is unusable.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
        return None, f"onnxruntime is not importable ({exc})"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None, (f"this onnxruntime build ({ort.__version__}) has no CUDA provider "
                      "(install onnxruntime-gpu for GPU inference)")
    try:
        session = ort.InferenceSession(str(model_path), sess_options=_session_options(threads),
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        if session.get_providers()[0] != "CUDAExecutionProvider":
            return None, "the CUDA provider could not be initialised (no NVIDIA GPU or CUDA/cuDNN libraries found)"
        session.run(None, _zero_input(session))
    except Exception as exc:  # ORT raises plain RuntimeError/Fail subclasses for CUDA failures
        return None, f"a CUDA test inference failed ({str(exc).splitlines()[0][:200]})"
    return session, ""


class InferenceEngine:
    """Runs an ONNX segmentation graph on batches of slices.

    Args:
        model_path: the .onnx file.
        device: "auto" (CUDA if it really works, else CPU), "cpu" or "cuda".
        threads: CPU threads for one inference (None: ONNX Runtime's default).
        input_name / output_name: graph tensor names from the model card.
        probe: CUDA check, injectable for tests; defaults to :func:`probe_cuda`.

    Raises:
        ValueError: unknown ``device``.
        DeviceError: ``device="cuda"`` without a working GPU.
        WeightsError: the file is missing or not a loadable ONNX model.
    """

    def __init__(self, model_path: Path, device: str = "auto", threads: Optional[int] = None,
                 input_name: str = "image", output_name: str = "logits",
                 probe: Optional[CudaProbe] = None) -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise WeightsError(f"Model file {self.model_path} does not exist.",
                               "Run `kdseg download <model id>` or check the registry.")
        self.input_name = input_name
        self.output_name = output_name
        session = None
        reason = ""
        if device in ("auto", "cuda"):
            session, reason = (probe or probe_cuda)(self.model_path, threads)
            if session is None and device == "cuda":
                raise DeviceError(f"CUDA was requested but cannot be used: {reason}.",
                                  "Install onnxruntime-gpu matching your CUDA version and NVIDIA driver, "
                                  "or use --device cpu.")
        if session is not None:
            self.device = "cuda"
            self.device_reason = "CUDA test inference succeeded"
        else:
            session = self._cpu_session(threads)
            self.device = "cpu"
            self.device_reason = "CPU requested" if device == "cpu" else f"using CPU: {reason}"
            if device == "auto":
                _log.info("Inference on CPU because %s", reason)
        self._session = session
        self.providers: List[str] = list(session.get_providers())
        names = [i.name for i in session.get_inputs()]
        if input_name not in names:
            raise WeightsError(f"Model {self.model_path.name} has no input named {input_name!r} (has {names}).",
                               "The registry entry's input_name does not match the ONNX file.")

    def _cpu_session(self, threads: Optional[int]):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(self.model_path), sess_options=_session_options(threads),
                                        providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise WeightsError(f"Cannot load {self.model_path} as an ONNX model "
                               f"({str(exc).splitlines()[0][:200]}).",
                               "Delete the file and download it again (`kdseg download <model id>`).") from None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, C, H, W) float32 for slices ``batch`` (N, channels, H, W)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self._session.run([self.output_name], {self.input_name: batch})[0]
