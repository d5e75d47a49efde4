"""Which ONNX Runtime build the Slicer module needs, checked without importing it."""

from __future__ import annotations

import importlib.util
import shutil
from typing import Optional

__all__ = ["onnxruntime_installed", "nvidia_gpu_present", "onnxruntime_requirement"]


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def nvidia_gpu_present(which=shutil.which) -> bool:
    """True when an NVIDIA driver is installed (its ``nvidia-smi`` tool is on PATH)."""
    return which("nvidia-smi") is not None


def onnxruntime_requirement(gpu: Optional[bool] = None) -> str:
    """The pip requirement to install: the GPU build where an NVIDIA GPU is present, else the CPU build."""
    if gpu is None:
        gpu = nvidia_gpu_present()
    return "onnxruntime-gpu>=1.17" if gpu else "onnxruntime>=1.17"
