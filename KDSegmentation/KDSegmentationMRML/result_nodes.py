"""Put a finished segmentation into the scene: segmentation node, volume table, hierarchy, 3D.

All or nothing: a failure removes every node this call added and leaves an existing
output node exactly as it was (see :mod:`.segmentation_output`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import slicer

from .segmentation_output import build_segmentation_node, remove_node_and_displays, replace_segments
from .volume_table import fill_volume_table

__all__ = ["VOLUME_TABLE_REFERENCE_ROLE", "ResultNodes", "apply_segmentation_result", "place_next_to"]

# Node reference from the segmentation to its volume table, so that a re-run updates
# the same table instead of adding one more.
VOLUME_TABLE_REFERENCE_ROLE = "KDSegmentationVolumeTable"


@dataclass(frozen=True)
class ResultNodes:
    segmentation_node: object
    table_node: object


def place_next_to(scene, node, reference_node) -> None:
    """Give ``node`` the subject-hierarchy parent of ``reference_node`` (the Study of DICOM
    data, the scene for files), as Slicer's Segment Editor does for new segmentations.

    In the application Slicer's subject-hierarchy plugins give every data node an item;
    a scene without them (slicer-core, batch scripts) may not, so missing items are made.
    """
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    invalid = slicer.vtkMRMLSubjectHierarchyNode.GetInvalidItemID()
    reference_item = sh.GetItemByDataNode(reference_node)
    parent = sh.GetItemParent(reference_item) if reference_item != invalid else sh.GetSceneItemID()
    item = sh.GetItemByDataNode(node)
    if item == invalid:
        sh.CreateItem(parent, node)
    else:
        sh.SetItemParent(item, parent)


def _existing_table(scene, segmentation_node):
    if segmentation_node is None:
        return None
    table = segmentation_node.GetNodeReference(VOLUME_TABLE_REFERENCE_ROLE)
    return table if table is not None and scene.IsNodePresent(table) else None


def apply_segmentation_result(scene, segmentations_logic, result, volume_node, output_node=None,
                              show_3d: bool = True, name: Optional[str] = None) -> ResultNodes:
    """Create or update the segmentation and volume-table nodes of ``result``; main thread only.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in the application).
        segmentations_logic: its ``vtkSlicerSegmentationsModuleLogic``.
        result: a ``VolumeSegmentation`` from the Lib (labels_kji, ijk_to_ras, segments,
            volumes_ml, display_names).
        volume_node: the segmented input; reference geometry, transform and hierarchy parent.
        output_node: segmentation node to overwrite, or None to create one.
        show_3d: build closed surfaces so the organs show in 3D views.
        name: name of a created node (default: "<input> organs", made unique).

    Returns:
        The segmentation node and its volume table node.

    Raises:
        ValueError, RuntimeError: as :func:`build_segmentation_node`; the scene is unchanged.
    """
    if name is None:
        name = scene.GenerateUniqueName(f"{volume_node.GetName()} organs")
    added = []
    try:
        built = build_segmentation_node(scene, segmentations_logic, result.labels_kji, result.ijk_to_ras,
                                        result.segments, volume_node, name)
        added.append(built)
        table = _existing_table(scene, output_node)
        if table is None:
            table = scene.AddNewNodeByClass("vtkMRMLTableNode",
                                            scene.GenerateUniqueName(f"{(output_node or built).GetName()} volumes"))
            added.append(table)
        if output_node is None:
            output_node = built
            place_next_to(scene, output_node, volume_node)
        else:
            replace_segments(output_node, built, volume_node)  # the user's segments go only now
            remove_node_and_displays(scene, built)
            added.remove(built)
        fill_volume_table(table, result.volumes_ml, result.display_names)
        output_node.SetNodeReferenceID(VOLUME_TABLE_REFERENCE_ROLE, table.GetID())
        if table in added:
            place_next_to(scene, table, output_node)
    except BaseException:
        for node in reversed(added):
            if scene.IsNodePresent(node):
                remove_node_and_displays(scene, node)
        raise
    if show_3d:
        output_node.CreateClosedSurfaceRepresentation()
    return ResultNodes(output_node, table)
