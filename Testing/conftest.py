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
