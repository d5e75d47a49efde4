"""Read what the segmentation needs from a scalar volume node, as plain numpy data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import vtk

import slicer

from KDSegmentationLib.errors import InputImageError

__all__ = ["VolumeInput", "read_volume_input", "first_ct_volume"]


@dataclass(frozen=True)
class VolumeInput:
    """A copy of a volume node's voxels and geometry, safe to hand to a worker thread.

    Args:
        array_kji: voxels (K, J, I) as ``slicer.util.arrayFromVolume`` orders them, a copy.
        ijk_to_ras: 4x4 IJK-to-RAS matrix of the node (excludes parent transforms).
        transform_node_id: ID of the node's parent transform, or None; the output goes
            under the same transform so that it stays aligned with the input.
    """

    array_kji: np.ndarray
    ijk_to_ras: np.ndarray
    transform_node_id: Optional[str]


def read_volume_input(volume_node) -> VolumeInput:
    """Copy the voxels, IJK-to-RAS matrix and parent transform of ``volume_node``.

    Args:
        volume_node: a ``vtkMRMLScalarVolumeNode`` with image data (not a label map).

    Raises:
        InputImageError: no node, no image data, or a label map / non-scalar volume.
    """
    if volume_node is None or volume_node.GetImageData() is None:
        raise InputImageError("The input volume has no image data.", "Select a loaded CT volume.")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode") or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputImageError(f"The input {volume_node.GetName()!r} is a {volume_node.GetClassName()}, not a CT "
                              "volume.", "Select a scalar CT volume (not a label map).")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise InputImageError(f"The input {volume_node.GetName()!r} has "
                              f"{volume_node.GetImageData().GetNumberOfScalarComponents()} components per voxel.",
                              "Select a single-component CT volume.")
    # Copied on the main thread: the worker must not touch VTK memory the scene may change.
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return VolumeInput(array, slicer.util.arrayFromVTKMatrix(matrix), volume_node.GetTransformNodeID() or None)


def first_ct_volume(scene):
    """The first scalar volume of ``scene`` that is not a label map, or None.

    ``GetFirstNodeByClass("vtkMRMLScalarVolumeNode")`` also returns label maps (a
    subclass), so a label map loaded before the CT would hide it.
    """
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    try:
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if not node.IsA("vtkMRMLLabelMapVolumeNode"):
                return node
        return None
    finally:
        nodes.UnRegister(None)  # GetNodesByClass hands over a reference (vtkCollection*)
