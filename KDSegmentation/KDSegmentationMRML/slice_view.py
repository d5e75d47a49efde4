"""What a slice view shows, read from MRML as plain numpy: the view's plane and the volume's geometry.

The Lib decides which canonical axial slice is under a view
(:func:`~KDSegmentationLib.imaging.slice_under_view.axial_slice_under_view`) from two
matrices; this file reads them from the nodes: the slice node's SliceToRAS and the
input volume's parent transforms (the volume's IJK-to-RAS excludes them, what the
view shows includes them). A non-linear parent transform has no matrix: no view then
shows one of the volume's slices.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import vtk

import slicer

from KDSegmentationLib.imaging.slice_under_view import SliceUnderView, ViewState, axial_slice_under_view
from KDSegmentationLib.inference.slice_preview import PreviewVolume
from KDSegmentationLib.slicer_support.live_preview import PreviewInput, ViewRequest
from KDSegmentationLib.slicer_support.run_settings import RunSettings

from .volume_input import read_volume_input

__all__ = ["PREVIEW_VIEW", "view_slice_node", "view_composite_node", "slice_to_ras", "parent_to_world",
           "preview_input", "view_request", "slice_under_view"]

# The live preview follows the axial (Red) view of Slicer's layouts.
PREVIEW_VIEW = "Red"


def view_slice_node(scene, layout_name: str = PREVIEW_VIEW):
    """The ``vtkMRMLSliceNode`` of the view called ``layout_name`` (e.g. "Red"), or None."""
    nodes = scene.GetNodesByClass("vtkMRMLSliceNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetLayoutName() == layout_name:
            return node
    return None


def view_composite_node(slice_node):
    """The ``vtkMRMLSliceCompositeNode`` (background/foreground/label layers) of ``slice_node``'s view, or None."""
    return slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(slice_node)


def slice_to_ras(slice_node) -> np.ndarray:
    """The view's 4x4 SliceToRAS matrix (plane axes, normal, centre in world RAS), a copy."""
    return slicer.util.arrayFromVTKMatrix(slice_node.GetSliceToRAS())


def parent_to_world(node) -> Optional[np.ndarray]:
    """4x4 matrix of ``node``'s parent transforms to world (identity without any), or None when
    one of them is not linear."""
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        return None
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _volume_key(volume_node) -> str:
    """Changes when the node, its voxels or its IJK-to-RAS change, not on a rename or a display change."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    geometry = ",".join(repr(float(v)) for v in slicer.util.arrayFromVTKMatrix(matrix).ravel())
    return f"{volume_node.GetID()}@{volume_node.GetImageData().GetMTime()}:{geometry}"


def preview_input(volume_node, previous: Optional[PreviewInput] = None) -> PreviewInput:
    """The volume's voxels and IJK-to-RAS for the preview worker, copied on the calling (main) thread.

    Args:
        volume_node: the input scalar volume node.
        previous: the last copy; returned as is when the volume has not changed since, so
            that scrolling copies nothing.

    Raises:
        InputImageError: no image data, a label map or a multi-component volume.
    """
    if volume_node is not None and volume_node.GetImageData() is not None and previous is not None \
            and previous.key == _volume_key(volume_node):
        return previous
    copied = read_volume_input(volume_node)
    return PreviewInput(_volume_key(volume_node), copied.array_kji, copied.ijk_to_ras)


def view_request(settings: RunSettings, volume: PreviewInput, slice_node, volume_node) -> ViewRequest:
    """What ``slice_node``'s view shows of ``volume_node`` now, as a request for the preview worker."""
    return ViewRequest(settings, volume, slice_to_ras(slice_node), parent_to_world(volume_node))


def slice_under_view(slice_node, volume_node, volume: PreviewVolume) -> SliceUnderView:
    """Which canonical axial slice of ``volume`` (prepared from ``volume_node``) the view of ``slice_node`` shows.

    Args:
        slice_node: a ``vtkMRMLSliceNode`` (e.g. the Red view's).
        volume_node: the scalar volume node ``volume`` was prepared from (for its parent transforms).
        volume: the prepared volume (canonical grid).
    """
    to_world = parent_to_world(volume_node)
    if to_world is None:
        return SliceUnderView(ViewState.NONLINEAR_TRANSFORM)
    return axial_slice_under_view(slice_to_ras(slice_node), to_world @ volume.ijk_to_ras, volume.shape)
