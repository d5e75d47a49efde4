"""KDSegmentationLib: Slicer-free organ segmentation of CT volumes with ONNX Runtime.

Imports no slicer, qt, vtk or torch, so it runs inside 3D Slicer, on the command
line (``kdseg``) and in the training code's evaluation alike.

Layout (one line per subpackage; DEVELOPING.md has the full table):

- ``imaging``: CT files in, label maps out, orientation, HU checks, Slicer array geometry.
- ``inference``: ONNX Runtime engine, preprocessing, slice resampling, pipeline, clean-up.
- ``weights``: model registry (model cards), weights resolution, verified download.
- ``slicer_support``: Slicer-free helpers of the Slicer module (settings, status, worker).
- top level: ``errors``, ``progress``, ``anatomy``, ``resources``, ``atomic_files``, ``cli``.

The public entry point is re-exported here::

    from KDSegmentationLib import Segmenter, SegmentationOptions, segment_file

Names resolve lazily (PEP 562), so ``import KDSegmentationLib`` (and ``kdseg --help``)
does not load SimpleITK, numpy or ONNX Runtime.
"""

from importlib import import_module
from typing import Any, List

__version__ = "0.1.0"

# Public name -> submodule defining it.
_PUBLIC = {
    "Segmenter": "inference.pipeline",
    "SegmentationOptions": "inference.pipeline",
    "SegmentationResult": "inference.pipeline",
    "segment_image": "inference.pipeline",
    "segment_file": "inference.pipeline",
    "ModelCard": "weights.model_registry",
    "ModelRegistry": "weights.model_registry",
    "load_registry": "weights.model_registry",
    "KDSegError": "errors",
    "CancelToken": "progress",
    "ProgressEvent": "progress",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    submodule = _PUBLIC.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{submodule}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_PUBLIC))
