"""ONNX Runtime for the Slicer module: which build to install, how, and what "Auto" will use.

Slicer bundles numpy and SimpleITK builds that its own modules depend on, so the
install pins both to the versions already present: pip then either installs an
onnxruntime release compatible with them or fails, and never replaces them.
Nothing here installs anything; the module passes :func:`install_requirements`
to ``slicer.util.pip_install`` after the user agrees.

ONNX Runtime is the only package installed. ``isal`` (ISA-L's inflate, a dependency of
the pip package that halves the command line's .nii.gz read) is not: the module never
decompresses a file itself (Slicer's own readers load the volume, and the module takes
its voxels from the scene), so inside Slicer it would be a download without a use.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

__all__ = ["OnnxRuntimeBuild", "onnxruntime_build", "onnxruntime_installed", "nvidia_gpu_present",
           "onnxruntime_requirement", "protected_pins",
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


# pip's CUDA/cuDNN wheels (the [cuda,cudnn] extras and preload_dlls) arrive with
# onnxruntime-gpu 1.21, which needs Python >= 3.10. Slicer 5.8 runs Python 3.9, where pip
# resolves onnxruntime-gpu 1.19.2: it uses the GPU only when CUDA 12 and cuDNN 9 are
# installed system-wide, so there the CPU build is installed by default.
_GPU_WHEELS_PYTHON = (3, 10)

# Download sizes of the Linux x86-64 wheels pip picks (measured with `pip download`,
# December 2026; numpy excluded, it is pinned); Windows wheels are of the same order.
_CPU_SIZE = {(3, 9): "13 MB (onnxruntime 1.19.2)", None: "28 MB (onnxruntime 1.32)"}
_GPU_SIZE_PY39 = "226 MB (onnxruntime-gpu 1.19.2)"
_GPU_SIZE = "1.5 GB (onnxruntime-gpu 1.31, 244 MB, with NVIDIA's CUDA 13 and cuDNN 9 libraries, 1.25 GB)"


@dataclass(frozen=True)
class OnnxRuntimeBuild:
    """The ONNX Runtime build the module installs, and what to tell the user about it.

    Args:
        requirement: pip requirement string.
        download: download size, e.g. "13 MB (onnxruntime 1.19.2)".
        reason: why this build ("" when it is the obvious one).
        gpu: whether it can run on an NVIDIA GPU without further installs.
    """

    requirement: str
    download: str
    reason: str
    gpu: bool


def onnxruntime_build(gpu: Optional[bool] = None, python_version: Optional[Tuple[int, int]] = None
                      ) -> OnnxRuntimeBuild:
    """Which ONNX Runtime build to install for this Python and machine.

    Args:
        gpu: an NVIDIA GPU is present (default: :func:`nvidia_gpu_present`).
        python_version: (major, minor) of Slicer's Python (default: this interpreter's).
    """
    if gpu is None:
        gpu = nvidia_gpu_present()
    version = tuple(python_version or sys.version_info[:2])
    cpu_size = _CPU_SIZE.get(version if version < _GPU_WHEELS_PYTHON else None, _CPU_SIZE[None])
    cpu = f"onnxruntime>={_MIN_VERSION}"
    if not gpu:
        return OnnxRuntimeBuild(cpu, cpu_size, "", False)
    if version < _GPU_WHEELS_PYTHON:
        return OnnxRuntimeBuild(
            cpu, cpu_size,
            f"An NVIDIA GPU is present, but on Python {version[0]}.{version[1]} (Slicer 5.8) the GPU build "
            f"(onnxruntime-gpu 1.19.2, {_GPU_SIZE_PY39.split(' (')[0]}) uses it only with CUDA 12 and cuDNN 9 "
            "installed system-wide, so the CPU build is installed. Slicer 5.10 or later gets the GPU build "
            "with its CUDA libraries.", False)
    return OnnxRuntimeBuild(f"onnxruntime-gpu[cuda,cudnn]>={_MIN_VERSION}", _GPU_SIZE,
                            "An NVIDIA GPU is present: the GPU build comes with its CUDA and cuDNN libraries.", True)


def onnxruntime_requirement(gpu: Optional[bool] = None, python_version: Optional[Tuple[int, int]] = None) -> str:
    """The pip requirement of :func:`onnxruntime_build`."""
    return onnxruntime_build(gpu, python_version).requirement


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
                         version_of: Callable[[str], Optional[str]] = _installed_version,
                         python_version: Optional[Tuple[int, int]] = None) -> List[str]:
    """Arguments for ``slicer.util.pip_install``: ONNX Runtime plus pins of Slicer's numpy and SimpleITK."""
    return [onnxruntime_requirement(gpu, python_version)] + protected_pins(version_of=version_of)


def onnxruntime_providers() -> Optional[List[str]]:
    """Execution providers of the installed ONNX Runtime, or None when it is not installed."""
    if not onnxruntime_installed():
        return None
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def describe_auto_device(providers: Optional[Sequence[str]], gpu_present: bool,
                         python_version: Optional[Tuple[int, int]] = None) -> str:
    """What device "Auto" will use, for the device menu (the engine still tests CUDA for real).

    Args:
        providers: ONNX Runtime's available providers, or None when it is not installed.
        gpu_present: whether an NVIDIA driver was found.
        python_version: (major, minor) of Slicer's Python (default: this interpreter's).
    """
    if providers is None:
        if gpu_present and not onnxruntime_build(True, python_version).gpu:
            return "CPU: Slicer 5.8 (Python 3.9) gets the CPU build of ONNX Runtime"
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
