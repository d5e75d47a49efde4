"""Fixtures shared by all pytest suites: real data paths and a real (untrained) ONNX graph."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Input size of the plumbing model: small so that tests stay fast on a 2-core CPU.
PLUMBING_IMG_SIZE = 64


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` from the repository root; the suite needs it and fails without it."""
    if not (SHARED_DATA / "README.md").is_file():
        raise FileNotFoundError(
            f"real test data not found at {SHARED_DATA}; the tests need the shared/ folder "
            "next to the repository checkout"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def untrained_student_onnx(tmp_path_factory) -> Path:
    """A freshly initialised SHSA student exported to ONNX.

    A real graph built by the project's own model code, for plumbing tests only: its
    outputs are meaningless and it is never offered to users as a model.
    """
    import torch

    from kdseg_train.export import export_onnx
    from kdseg_train.models import create_model

    torch.manual_seed(0)
    model = create_model("student-shsa", num_classes=9, img_size=PLUMBING_IMG_SIZE).eval()
    path = tmp_path_factory.mktemp("plumbing_model") / "untrained-student-shsa.onnx"
    export_onnx(model, path, img_size=PLUMBING_IMG_SIZE)
    return path


def write_plumbing_registry(directory: Path, onnx_path: Path, img_size: int = PLUMBING_IMG_SIZE) -> Path:
    """A registry JSON in ``directory`` whose one entry bundles ``onnx_path`` (untrained, tests only)."""
    import hashlib
    import shutil

    from KDSegmentationLib.weights.model_registry import InputSpec, ModelCard, labels_from_anatomy, write_registry

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "untrained-plumbing.onnx"
    shutil.copyfile(onnx_path, target)
    data = target.read_bytes()
    card = ModelCard(
        id="untrained-plumbing", title="Untrained plumbing model", version="0.0.0",
        description="freshly initialised student-shsa; outputs are meaningless", architecture="student-shsa",
        file=target.name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), urls=(target.name,),
        input=InputSpec(1, img_size, img_size, (-125.0, 275.0)), labels=labels_from_anatomy(),
        license="Apache-2.0", intended_use="untrained plumbing model for tests only")
    return write_registry(directory / "registry.json", [card], "untrained-plumbing")


@pytest.fixture
def plumbing_registry(tmp_path, untrained_student_onnx) -> Path:
    """Path of a registry whose default model is the untrained plumbing graph."""
    return write_plumbing_registry(tmp_path / "models", untrained_student_onnx)


@pytest.fixture(scope="session")
def plumbing_segmenter(tmp_path_factory, untrained_student_onnx):
    """A CPU Segmenter on the untrained plumbing graph (geometry and plumbing tests only)."""
    from KDSegmentationLib.inference.pipeline import Segmenter

    registry = write_plumbing_registry(tmp_path_factory.mktemp("seg_models"), untrained_student_onnx)
    return Segmenter.from_registry(device="cpu", registry=registry, allow_download=False)


@pytest.fixture(scope="session")
def example_ct(shared_data):
    import SimpleITK as sitk

    return sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_ct.nii.gz"))
