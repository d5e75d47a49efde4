"""ONNX Runtime inference session with honest device selection.

``onnxruntime-gpu`` lists the CUDA provider even on machines without a usable GPU,
and a session asked for CUDA silently falls back to the CPU when CUDA cannot be
initialised. So CUDA counts as available only when a CUDA session reports CUDA as
its provider *and* really runs a first inference (:func:`probe_cuda`). The choice
itself (:func:`select_device`) is a pure function of the request and the probe's
outcome, so each path is tested without a GPU and without pretending to have one.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DeviceError, WeightsError
from .thread_spinning import SPINNING_POLICIES, SpinningChoice, choose_spinning

__all__ = ["DEVICES", "CUDA_PROVIDER", "CPU_PROVIDER", "InferenceEngine", "probe_cuda", "select_device",
           "CudaProbe"]

DEVICES = ("auto", "cpu", "cuda")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
_log = logging.getLogger("KDSegmentationLib")

# probe(model_path, threads) -> (working CUDA session or None, reason CUDA is unusable or "")
CudaProbe = Callable[[Path, Optional[int]], Tuple[Optional[Any], str]]

_DEVICE_FIX = ("Install the onnxruntime-gpu build matching your CUDA version and NVIDIA driver "
               "(https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#requirements), "
               "or use --device cpu.")


def _session_options(threads: Optional[int], quiet: bool = False, spinning: bool = False):
    """ONNX Runtime options of every session the engine opens.

    Args:
        threads: intra-op threads (None: ONNX Runtime's default, one per core).
        quiet: no ONNX Runtime log output (the CUDA probe reports in one line).
        spinning: intra-op threads busy-wait while a run is in progress instead of sleeping,
            and stop spinning when it returns (``inference.thread_spinning`` decides).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1  # one graph, run node after node: no second pool
    # Sleeping idle threads by default: a spinning thread burns the time slice other
    # processes (and Slicer's GUI thread) need, which ran a loaded 2-core machine's
    # segmentation 1.4-4x slower. Where spinning is allowed, it ends with each run, so
    # the pipeline's own work between batches never competes with spinning threads.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if quiet:
        # The probe reports why CUDA is unusable in one line; ONNX Runtime's own
        # provider-loading errors would only repeat it on stderr.
        options.log_severity_level = 4
    return options


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:240]


def _zero_feed(session) -> dict:
    """One all-zero sample for every graph input (dynamic dimensions set to 1)."""
    feed = {}
    for node in session.get_inputs():
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in node.shape]
        feed[node.name] = np.zeros(shape, dtype=np.float32)
    return feed


def probe_cuda(model_path: Path, threads: Optional[int] = None, *,
               available_providers: Optional[Sequence[str]] = None,
               session_factory: Optional[Callable[..., Any]] = None) -> Tuple[Optional[Any], str]:
    """Open ``model_path`` on CUDA and run one real inference on a zero input.

    Args:
        model_path: the ONNX file.
        threads: CPU threads of the session (for nodes CUDA does not run).
        available_providers: what the installed ONNX Runtime lists (default:
            ``onnxruntime.get_available_providers()``); overridable to exercise the
            onnxruntime-gpu-without-GPU case on any machine.
        session_factory: ``onnxruntime.InferenceSession`` or a stand-in.

    Returns:
        ``(session, "")`` when the session runs on CUDA, else ``(None, reason)``.
    """
    import onnxruntime as ort

    providers = list(ort.get_available_providers() if available_providers is None else available_providers)
    if CUDA_PROVIDER not in providers:
        return None, (f"the installed onnxruntime {ort.__version__} has no CUDA provider "
                      f"(it offers {', '.join(providers) or 'none'})")
    factory = session_factory or ort.InferenceSession
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "provider not in available provider names"
            session = factory(str(model_path), sess_options=_session_options(threads, quiet=True),
                              providers=[CUDA_PROVIDER, CPU_PROVIDER])
    except Exception as exc:  # ORT raises its own Fail/RuntimeException types for CUDA set-up failures
        return None, f"creating a CUDA session failed ({_first_line(exc)})"
    active = list(session.get_providers())
    if CUDA_PROVIDER not in active:
        return None, ("ONNX Runtime could not initialise CUDA and fell back to "
                      f"{', '.join(active) or 'no provider'} (no usable NVIDIA GPU/driver, "
                      "or CUDA/cuDNN libraries missing)")
    try:
        session.run(None, _zero_feed(session))
    except Exception as exc:
        return None, f"a test inference on CUDA failed ({_first_line(exc)})"
    return session, ""


def select_device(requested: str, cuda_works: bool, cuda_reason: str) -> Tuple[str, str]:
    """Decide the device from the request and the CUDA probe's outcome.

    Args:
        requested: "auto", "cpu" or "cuda".
        cuda_works: the probe ran an inference on CUDA (ignored for "cpu").
        cuda_reason: why CUDA is unusable, when it is not.

    Returns:
        (device, reason): device is "cpu" or "cuda"; reason is one human-readable line.

    Raises:
        ValueError: unknown ``requested``.
        DeviceError: "cuda" was requested and does not work (with the fix).
    """
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {requested!r}")
    if requested == "cpu":
        return "cpu", "CPU requested"
    if cuda_works:
        return "cuda", "CUDA test inference succeeded"
    if requested == "cuda":
        raise DeviceError(f"CUDA was requested but cannot be used: {cuda_reason}.", _DEVICE_FIX)
    return "cpu", f"CUDA not used: {cuda_reason}"


class InferenceEngine:
    """Runs an ONNX segmentation graph on batches of slices.

    Args:
        model_path: the .onnx file.
        device: "auto" (CUDA if it really works, else CPU with one log line saying why),
            "cpu" or "cuda" (fails with :class:`DeviceError` when CUDA does not work).
        threads: CPU threads for one inference (``intra_op_num_threads``; None: ONNX
            Runtime's default, one per core).
        spinning: "auto" (CPU threads spin during a run only when the machine has the
            cores free, measured now), "on" or "off"; see :mod:`.thread_spinning`.
            CUDA sessions never spin (their CPU threads mostly wait for the GPU).
        spinning_choice: the decision function (default
            :func:`.thread_spinning.choose_spinning`), injectable for tests.
        input_name / output_name: graph tensor names from the model card.
        probe: CUDA check ``probe(model_path, threads) -> (session | None, reason)``,
            injectable for tests; defaults to :func:`probe_cuda`. A session it returns
            is used only if it reports CUDA among its providers.

    Attributes:
        device: "cpu" or "cuda".
        device_reason: one line explaining the choice.
        spinning: whether the session's intra-op threads spin during a run.
        spinning_reason: one line explaining that choice.
        providers: the session's execution providers, in priority order.
        input_shape: the graph's (channels, height, width); None where dynamic.

    Raises:
        ValueError: unknown ``device`` or ``spinning``, or ``threads`` < 1.
        WeightsError: the file is missing, not a loadable ONNX model, or lacks the named tensors.
        DeviceError: ``device="cuda"`` without a working GPU.
    """

    def __init__(self, model_path: Path, device: str = "auto", threads: Optional[int] = None,
                 input_name: str = "image", output_name: str = "logits",
                 probe: Optional[CudaProbe] = None, spinning: str = "auto",
                 spinning_choice: Optional[Callable[[str, Optional[int]], SpinningChoice]] = None) -> None:
        requested = device.strip().lower() if isinstance(device, str) else device
        if requested not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
        if threads is not None and (isinstance(threads, bool) or int(threads) != threads or threads < 1):
            raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
        if spinning not in SPINNING_POLICIES:
            raise ValueError(f"spinning must be one of {', '.join(SPINNING_POLICIES)}; got {spinning!r}")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise WeightsError(f"Model file {self.model_path} does not exist.",
                               "Run `kdseg download <model id>`, or check the registry entry's file name.")
        self.input_name = input_name
        self.output_name = output_name

        self.spinning, self.spinning_reason = False, "CUDA session: CPU threads sleep"
        self._spinning_policy = spinning
        self._spinning_choice = spinning_choice or choose_spinning
        session = None
        cuda_reason = ""
        if requested != "cpu":
            session, cuda_reason = (probe or probe_cuda)(self.model_path, threads)
            if session is not None and CUDA_PROVIDER not in list(session.get_providers()):
                session, cuda_reason = None, (f"the CUDA check returned a session running on "
                                              f"{', '.join(session.get_providers())}")
            if session is None:
                # Load on the CPU first: a corrupt file must be reported as such, not as a GPU problem.
                session = self._cpu_session(threads)
                cuda_reason = cuda_reason or "the CUDA check failed without a reason"
                session_is_cuda = False
            else:
                session_is_cuda = True
        else:
            session = self._cpu_session(threads)
            session_is_cuda = False
        self.device, self.device_reason = select_device(requested, session_is_cuda, cuda_reason)
        if requested == "auto" and self.device == "cpu":
            # Expected on CPU-only installs (info); a GPU build that does not work deserves a warning.
            level = logging.WARNING if _gpu_build_installed() else logging.INFO
            _log.log(level, "Inference on CPU: %s", self.device_reason)

        self._session = session
        self.providers: List[str] = list(session.get_providers())
        inputs = {node.name: node for node in session.get_inputs()}
        outputs = [node.name for node in session.get_outputs()]
        if input_name not in inputs:
            raise WeightsError(f"Model {self.model_path.name} has no input named {input_name!r} "
                               f"(it has {', '.join(inputs)}).",
                               "The registry entry's input.input_name does not match the ONNX file.")
        if output_name not in outputs:
            raise WeightsError(f"Model {self.model_path.name} has no output named {output_name!r} "
                               f"(it has {', '.join(outputs)}).",
                               "The registry entry's input.output_name does not match the ONNX file.")
        shape = list(inputs[input_name].shape)
        if len(shape) != 4:
            raise WeightsError(f"Model {self.model_path.name} input {input_name!r} has shape {shape}; "
                               "a slice model takes (N, channels, height, width).",
                               "Export the model with `kdseg-train export`.")
        self.input_shape: Tuple[Optional[int], ...] = tuple(
            dim if isinstance(dim, int) and dim > 0 else None for dim in shape[1:])

    def _cpu_session(self, threads: Optional[int]):
        import onnxruntime as ort

        choice = self._spinning_choice(self._spinning_policy, threads)
        self.spinning, self.spinning_reason = choice.spinning, choice.reason
        try:
            return ort.InferenceSession(str(self.model_path),
                                        sess_options=_session_options(threads, spinning=choice.spinning),
                                        providers=[CPU_PROVIDER])
        except Exception as exc:  # ORT raises InvalidProtobuf/Fail/... for unreadable graphs
            raise WeightsError(f"Cannot load {self.model_path} as an ONNX model ({_first_line(exc)}).",
                               "Delete the file and obtain it again (`kdseg download <model id>`), "
                               "or re-export it with `kdseg-train export`.") from None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch of slices.

        Args:
            batch: (N, channels, H, W) model input, converted to contiguous float32.

        Returns:
            (N, C, H, W) float32 logits.

        Raises:
            ValueError: ``batch`` is not 4-D or does not match the graph's fixed dimensions.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[0] < 1:
            raise ValueError(f"batch must be (N, channels, height, width) with N >= 1, got shape {batch.shape}")
        for axis, (got, want) in enumerate(zip(batch.shape[1:], self.input_shape), start=1):
            if want is not None and got != want:
                expected = ", ".join("N" if d is None else str(d) for d in (None,) + self.input_shape)
                raise ValueError(f"batch has shape {batch.shape}; model {self.model_path.name} takes ({expected}) "
                                 f"(axis {axis} differs)")
        return self._session.run([self.output_name], {self.input_name: batch})[0]


def _gpu_build_installed() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a runtime dependency
        return False
    return CUDA_PROVIDER in ort.get_available_providers()
