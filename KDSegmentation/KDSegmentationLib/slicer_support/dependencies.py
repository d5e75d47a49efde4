"""ONNX Runtime for the Slicer module: which build to install, how, and what "Auto" will use.

Slicer bundles numpy and SimpleITK builds that its own modules depend on, so the
install pins both to the versions already present: pip then either installs an
onnxruntime release compatible with them or fails, and never replaces them.
Nothing here installs anything; the module passes :func:`install_requirements`
to ``slicer.util.pip_install`` after the user agrees.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from typing import Callable, List, Optional, Sequence

__all__ = ["onnxruntime_installed", "nvidia_gpu_present", "onnxruntime_requirement", "protected_pins",
           "install_requirements", "onnxruntime_providers", "describe_auto_device", "preload_cuda_libraries",
           "PROTECTED_PACKAGES"]

# Packages Slicer ships and other modules rely on: never upgraded or downgraded by our install.
PROTECTED_PACKAGES = ("numpy", "SimpleITK")
_MIN_VERSION = "1.17"


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def nvidia_gpu_present(which: Callable[[str], Optional[str]] = shutil.which) -> bool:
    """True when an NVIDIA driver is installed (its ``nvidia-smi`` tool is on PATH)."""
    return which("nvidia-smi") is not None


def onnxruntime_requirement(gpu: Optional[bool] = None) -> str:
    """The ONNX Runtime requirement: the GPU build (with pip's CUDA and cuDNN libraries) where an
    NVIDIA GPU is present, else the CPU build."""
    if gpu is None:
        gpu = nvidia_gpu_present()
    return f"onnxruntime-gpu[cuda,cudnn]>={_MIN_VERSION}" if gpu else f"onnxruntime>={_MIN_VERSION}"


def _installed_version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def protected_pins(packages: Sequence[str] = PROTECTED_PACKAGES,
                   version_of: Callable[[str], Optional[str]] = _installed_version) -> List[str]:
    """``package==installed version`` for each protected package that is installed."""
    pins = []
    for package in packages:
        version = version_of(package)
        if version:
            pins.append(f"{package}=={version}")
    return pins


def install_requirements(gpu: Optional[bool] = None,
                         version_of: Callable[[str], Optional[str]] = _installed_version) -> List[str]:
    """Arguments for ``slicer.util.pip_install``: ONNX Runtime plus pins of Slicer's numpy and SimpleITK."""
    return [onnxruntime_requirement(gpu)] + protected_pins(version_of=version_of)


def onnxruntime_providers() -> Optional[List[str]]:
    """Execution providers of the installed ONNX Runtime, or None when it is not installed."""
    if not onnxruntime_installed():
        return None
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def describe_auto_device(providers: Optional[Sequence[str]], gpu_present: bool) -> str:
    """What device "Auto" will use, for the device menu (the engine still tests CUDA for real).

    Args:
        providers: ONNX Runtime's available providers, or None when it is not installed.
        gpu_present: whether an NVIDIA driver was found.
    """
    if providers is None:
        return "GPU (CUDA) after installing ONNX Runtime" if gpu_present else "CPU"
    if "CUDAExecutionProvider" not in providers:
        if gpu_present:
            return "CPU: the installed ONNX Runtime has no CUDA support (install onnxruntime-gpu)"
        return "CPU"
    if not gpu_present:
        return "CPU: no NVIDIA driver found"
    return "GPU (CUDA) if a test inference succeeds, else CPU"


def preload_cuda_libraries() -> bool:
    """Make the CUDA/cuDNN libraries installed by pip (``nvidia-*`` packages) loadable.

    ONNX Runtime 1.21 and later provide ``preload_dlls`` for this; older builds find
    CUDA only through the system library path. Returns True when a preload ran.
    """
    if not onnxruntime_installed() or importlib.util.find_spec("nvidia") is None:
        return False
    import onnxruntime

    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is None:
        return False
    preload()
    return True
