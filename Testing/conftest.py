"""Fixtures shared by all pytest suites: real data paths and the bundled real ONNX model for plumbing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` from the repository root (pytest_sessionstart has checked that it exists)."""
    return SHARED_DATA


def pytest_sessionstart(session) -> None:
    """Stop at once, in one line, when the real test data is missing (instead of N failures)."""
    if not (SHARED_DATA / "README.md").is_file():
        raise pytest.UsageError(
            f"real test data not found: the tests read {SHARED_DATA} (the shared/ folder next to the "
            "repository checkout, i.e. ../shared/data from the repository root); put it there")


def _bundled_default():
    """(ONNX path, model card) of the shipped default model in Resources/Models."""
    from KDSegmentationLib.weights.model_registry import load_registry

    registry = load_registry()
    card = registry.get()
    return registry.directory / card.file, card


@pytest.fixture(scope="session")
def plumbing_onnx() -> Path:
    """The bundled, trained default model's ONNX file, used to test plumbing.

    A real graph with real weights, read with ONNX Runtime alone (no torch). Tests on it
    check what the pipeline guarantees whatever the weights; they do not assert accuracy.
    """
    path, _ = _bundled_default()
    return path


@pytest.fixture(scope="session")
def plumbing_size() -> int:
    """Square input size (pixels) of :func:`plumbing_onnx`, from its model card."""
    _, card = _bundled_default()
    return card.input.height


@pytest.fixture(scope="session")
def plumbing_registry_writer():
    """:func:`write_plumbing_registry`, for test folders that have their own conftest.py: in the whole
    suite ``from conftest import ...`` finds whichever conftest module pytest imported last."""
    return write_plumbing_registry


def write_plumbing_registry(directory: Path, onnx_path: Path, img_size: Optional[int] = None) -> Path:
    """A registry JSON in ``directory`` whose one entry bundles a copy of ``onnx_path`` (tests only)."""
    import hashlib
    import shutil

    from KDSegmentationLib.weights.model_registry import InputSpec, ModelCard, labels_from_anatomy, write_registry

    _, bundled = _bundled_default()
    img_size = img_size or bundled.input.height
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "plumbing.onnx"
    shutil.copyfile(onnx_path, target)
    data = target.read_bytes()
    card = ModelCard(
        id="plumbing", title="Plumbing model", version="0.0.0",
        description=f"copy of the bundled {bundled.id} under a test registry", architecture=bundled.architecture,
        file=target.name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), urls=(target.name,),
        input=InputSpec(1, img_size, img_size, bundled.input.hu_window), labels=labels_from_anatomy(),
        license="Apache-2.0", intended_use="plumbing model for tests only")
    return write_registry(directory / "registry.json", [card], "plumbing")


@pytest.fixture
def plumbing_registry(tmp_path, plumbing_onnx) -> Path:
    """Path of a registry whose default model is a copy of the bundled graph."""
    return write_plumbing_registry(tmp_path / "models", plumbing_onnx)


@pytest.fixture(scope="session")
def plumbing_segmenter(tmp_path_factory, plumbing_onnx):
    """A CPU Segmenter on the bundled graph (geometry and plumbing tests only)."""
    from KDSegmentationLib.inference.pipeline import Segmenter

    registry = write_plumbing_registry(tmp_path_factory.mktemp("seg_models"), plumbing_onnx)
    return Segmenter.from_registry(device="cpu", registry=registry, allow_download=False)


@pytest.fixture(scope="session")
def example_ct(shared_data):
    import SimpleITK as sitk

    return sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_ct.nii.gz"))
