"""Build the result's segments in a fresh segmentation node, then hand them to the output node.

The segments are first built in a node of their own: one empty segment per kept
structure (name, colour, SNOMED CT terminology tag), then one import of the label map
(label value k goes to the segment listed at k - 1). Only when that succeeded is an
existing output node's content replaced, in one ``DeepCopy``; until then the user's
segments are untouched. The copy also brings the new source representation (binary
labelmap), so an output loaded from STL (source "Closed surface") can receive it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import vtk

import slicer

__all__ = ["TEMPORARY_LABELS_NAME", "check_result_fits_volume", "build_segmentation_node",
           "replace_segments", "segment_label_values", "remove_node_and_displays"]

TEMPORARY_LABELS_NAME = "KDSegmentation temporary labels"


def check_result_fits_volume(labels_kji: np.ndarray, ijk_to_ras: np.ndarray, volume_node) -> None:
    """Raise ValueError unless the labels lie on ``volume_node``'s current grid.

    The worker segmented a copy; a volume resampled or replaced since then would
    receive labels that no longer match its voxels.

    Args:
        labels_kji: label map (K, J, I).
        ijk_to_ras: 4x4 IJK-to-RAS matrix of the labels.
        volume_node: the input scalar volume node.
    """
    dimensions = volume_node.GetImageData().GetDimensions() if volume_node.GetImageData() else None
    if dimensions is None or tuple(labels_kji.shape) != tuple(reversed(dimensions)):
        raise ValueError(f"the labels have shape {tuple(labels_kji.shape)} but the volume "
                         f"{volume_node.GetName()!r} now has {tuple(reversed(dimensions or ()))} (K, J, I); "
                         "it changed while segmenting")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    if not np.allclose(slicer.util.arrayFromVTKMatrix(matrix), ijk_to_ras, atol=1e-6):
        raise ValueError(f"the volume {volume_node.GetName()!r} moved (its IJK-to-RAS matrix changed) while "
                         "segmenting")


def segment_label_values(labels_kji: np.ndarray, segments: Sequence) -> None:
    """Raise ValueError when the label map holds a value no segment describes."""
    described = {int(spec.label_value) for spec in segments}
    present = {int(v) for v in np.unique(labels_kji)} - {0}
    if present - described:
        raise ValueError(f"label values {sorted(present - described)} have no segment description "
                         f"(described: {sorted(described)})")


def _label_node(scene, labels_kji: np.ndarray, ijk_to_ras: np.ndarray, transform_node_id: Optional[str]):
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName(TEMPORARY_LABELS_NAME))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(labels_kji, dtype=np.uint8))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    node.SetAndObserveTransformNodeID(transform_node_id)
    return node


def build_segmentation_node(scene, segmentations_logic, labels_kji: np.ndarray, ijk_to_ras: np.ndarray,
                            segments: Sequence, volume_node, name: str):
    """A new segmentation node in ``scene`` holding the labels as named, coloured, coded segments.

    Args:
        scene: the MRML scene.
        segmentations_logic: ``vtkSlicerSegmentationsModuleLogic`` of that scene.
        labels_kji: uint8 label map (K, J, I) on ``volume_node``'s grid.
        ijk_to_ras: its 4x4 IJK-to-RAS matrix.
        segments: ``SegmentSpec``-like objects (label_value, name, color 0-1, terminology or None)
            in label order; every non-zero label value must have one.
        volume_node: the input; reference geometry and parent transform of the result.
        name: node name.

    Returns:
        The node (with display nodes). On any failure nothing it added stays in the scene.

    Raises:
        ValueError: labels and volume disagree, or a label value has no description.
        RuntimeError: Slicer refused the label-map import.
    """
    check_result_fits_volume(labels_kji, ijk_to_ras, volume_node)
    segment_label_values(labels_kji, segments)
    transform_node_id = volume_node.GetTransformNodeID()
    label_node = None
    node = None
    try:
        label_node = _label_node(scene, labels_kji, ijk_to_ras, transform_node_id)
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.SetAndObserveTransformNodeID(transform_node_id)
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        segmentation = node.GetSegmentation()
        max_label = max([int(spec.label_value) for spec in segments] + [0])
        segment_ids = vtk.vtkStringArray()
        segment_ids.SetNumberOfValues(max_label)
        for index in range(max_label):
            segment_ids.SetValue(index, "")  # label values without a segment are skipped
        for spec in segments:
            # The returned ID is used: Slicer makes up IDs for empty ones and suffixes clashes.
            segment_id = segmentation.AddEmptySegment("", spec.name, [float(c) for c in spec.color])
            if spec.terminology:
                segment = segmentation.GetSegment(segment_id)
                segment.SetTag(segment.GetTerminologyEntryTagName(), spec.terminology)
            segment_ids.SetValue(int(spec.label_value) - 1, segment_id)
        if not segmentations_logic.ImportLabelmapToSegmentationNode(label_node, node, segment_ids):
            raise RuntimeError("Slicer could not import the label map into the segmentation "
                               "(vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode returned False).")
        node.CreateDefaultDisplayNodes()
    except BaseException:
        if node is not None:
            remove_node_and_displays(scene, node)
        raise
    finally:
        if label_node is not None:
            remove_node_and_displays(scene, label_node)
    return node


def replace_segments(target_node, built_node, volume_node) -> None:
    """Give ``target_node`` exactly the segments, source representation and reference geometry
    of ``built_node`` (the user's previous segments go only now), under the input's transform."""
    target_node.GetSegmentation().DeepCopy(built_node.GetSegmentation())
    target_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    target_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    if target_node.GetDisplayNode() is None:
        target_node.CreateDefaultDisplayNodes()
    # A node read from STL shows its surface in slice views; show the new labelmap there.
    target_node.GetDisplayNode().SetPreferredDisplayRepresentationName2D(
        slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())


def remove_node_and_displays(scene, node) -> None:
    """Remove ``node`` with its display and storage nodes (``RemoveNode`` alone leaves them)."""
    owned = []
    if node.IsA("vtkMRMLDisplayableNode"):
        owned += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        owned += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for child in owned:
        if child is not None and scene.IsNodePresent(child):
            scene.RemoveNode(child)
