"""Where the extension's data files (model registry, bundled weights, sample CT) live."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resources_dir", "models_dir", "registry_path", "sample_ct_path"]

_REGISTRY_RELATIVE = Path("Models") / "registry.json"


def resources_dir() -> Path:
    """The ``Resources`` folder holding ``Models/`` and ``Samples/``.

    Looked up in order: ``$KDSEG_RESOURCES``; the repository's top-level ``Resources/``
    (source checkout or editable install); the Slicer module's ``Resources/`` (an
    installed extension, where CMake copies the same files).
    """
    env = os.environ.get("KDSEG_RESOURCES")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "Resources", here.parents[1] / "Resources"]
    for candidate in candidates:
        if (candidate / _REGISTRY_RELATIVE).is_file():
            return candidate
    return candidates[0]


def models_dir() -> Path:
    return resources_dir() / "Models"


def registry_path() -> Path:
    """The default model registry JSON (``$KDSEG_REGISTRY`` overrides)."""
    env = os.environ.get("KDSEG_REGISTRY")
    if env:
        return Path(env).expanduser()
    return resources_dir() / _REGISTRY_RELATIVE


def sample_ct_path() -> Path:
    """The small real abdominal CT bundled for ``kdseg segment --sample``."""
    return resources_dir() / "Samples" / "totalsegmentator_example_ct.nii.gz"
