"""Slicer's real MRML libraries (slicer-core + trame-slicer's SlicerApp) for the module's MRML layer.

slicer-core wheels exist for CPython 3.11 only; the ``test`` extra installs them there
(``trame-slicer[standalone]``). On 3.11 a missing or broken install fails these tests
(CI must run them); on other Pythons they are skipped with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest

SLICER_CORE_PYTHON = (3, 11)

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config, items):
    if sys.version_info[:2] == SLICER_CORE_PYTHON:
        return
    reason = (f"slicer-core wheels are built for CPython {SLICER_CORE_PYTHON[0]}.{SLICER_CORE_PYTHON[1]} only; "
              f"this is {sys.version_info[0]}.{sys.version_info[1]}")
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def slicer_app():
    """One SlicerApp per session: scene, Volumes/Segmentations/Terminologies/SubjectHierarchy logics."""
    from trame_slicer.core import SlicerApp  # fails loudly when the test extra is not installed

    return SlicerApp()


@pytest.fixture
def app(slicer_app):
    """The shared SlicerApp; nodes a test adds are removed afterwards so tests stay independent."""
    scene = slicer_app.scene
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    yield slicer_app
    added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    for node in added:
        if node.GetID() not in before and scene.IsNodePresent(node):
            scene.RemoveNode(node)


def node_ids(scene) -> List[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


@pytest.fixture(scope="session")
def bundled_segmenter():
    """The shipped demonstration model on CPU (the module's default model)."""
    from KDSegmentationLib.inference.pipeline import Segmenter

    return Segmenter.from_registry(device="cpu", allow_download=False)
