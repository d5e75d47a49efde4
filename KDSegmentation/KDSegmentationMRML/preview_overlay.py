"""The live preview's overlay nodes: a one-slice label volume with named organ colours, in one view only.

A previewed slice becomes a ``vtkMRMLLabelMapVolumeNode`` holding that single slice,
placed exactly on the input's voxels (its IJK-to-RAS comes from the Lib) and under the
input's parent transform, coloured and named by a ``vtkMRMLColorTableNode`` built from
the model card (background transparent). It is shown as the label layer of one slice
view's composite node, so it appears in that view only; the layer the view showed
before (label volume and opacity) is restored when the preview is removed. Slicer's
reslice extends a one-slice volume by half a voxel on each side, so the overlay shows
exactly while the view lies within that slice (tested with the real slice logic).

Preview nodes are marked with :data:`PREVIEW_NODE_ATTRIBUTE`, hidden from node
selectors and not saved with the scene; :func:`remove_slice_preview` finds and removes
them all, whoever created them.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

import slicer

__all__ = ["PREVIEW_NODE_ATTRIBUTE", "OVERLAY_NAME", "COLORS_NAME", "DEFAULT_OPACITY", "preview_nodes",
           "show_slice_preview", "remove_slice_preview"]

PREVIEW_NODE_ATTRIBUTE = "KDSegmentation.LivePreview"
OVERLAY_NAME = "KDSegmentation live preview"
COLORS_NAME = "KDSegmentation live preview colours"
DEFAULT_OPACITY = 0.5
_PREVIOUS_LABEL_VOLUME = "KDSegmentation.LivePreview.PreviousLabelVolumeID"
_PREVIOUS_LABEL_OPACITY = "KDSegmentation.LivePreview.PreviousLabelOpacity"
_COLORS_MODEL = "KDSegmentation.LivePreview.Model"


def preview_nodes(scene) -> List:
    """Every node in ``scene`` that the live preview created (overlays, colour tables, their display nodes)."""
    found = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.GetAttribute(PREVIEW_NODE_ATTRIBUTE) is not None:
            found.append(node)
    return found


def _mark(node, role: str) -> None:
    node.SetAttribute(PREVIEW_NODE_ATTRIBUTE, role)
    node.SetHideFromEditors(True)
    node.SetSaveWithScene(False)


def _find(scene, role: str):
    for node in preview_nodes(scene):
        if node.GetAttribute(PREVIEW_NODE_ATTRIBUTE) == role:
            return node
    return None


def _colour_table(scene, card):
    """The colour table of ``card``'s labels: names and colours, background transparent (one per model)."""
    table = _find(scene, "colours")
    if table is not None and table.GetAttribute(_COLORS_MODEL) == f"{card.id} {card.version}":
        return table
    if table is None:
        table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLORS_NAME)
        _mark(table, "colours")
    table.SetTypeToUser()
    size = max(label.index for label in card.labels) + 1
    table.SetNumberOfColors(size)
    for index in range(size):
        table.SetColor(index, "", 0.0, 0.0, 0.0, 0.0)
    for label in card.labels:
        if label.index == 0:
            continue
        red, green, blue = (channel / 255.0 for channel in label.color)
        table.SetColor(label.index, label.display_name, red, green, blue, 1.0)
    table.SetAttribute(_COLORS_MODEL, f"{card.id} {card.version}")
    return table


def show_slice_preview(scene, preview, card, volume_node, composite_node, opacity: float = DEFAULT_OPACITY):
    """Show ``preview`` as the label layer of ``composite_node``'s view, creating or updating the overlay.

    Args:
        scene: the MRML scene.
        preview: a ``SlicePreview`` from the Lib (labels (1, Y, X) uint8 and their IJK-to-RAS).
        card: the model card (label names and colours).
        volume_node: the input volume; the overlay goes under its parent transform.
        composite_node: the ``vtkMRMLSliceCompositeNode`` of the view to show it in.
        opacity: label-layer opacity while the preview is shown.

    Returns:
        The overlay ``vtkMRMLLabelMapVolumeNode``.
    """
    labels = np.ascontiguousarray(preview.labels, dtype=np.uint8)
    if labels.ndim != 3 or labels.shape[0] != 1:
        raise ValueError(f"a slice preview holds one slice (1, Y, X), got shape {labels.shape}")
    colours = _colour_table(scene, card)
    overlay = _find(scene, "overlay")
    if overlay is None:
        overlay = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", OVERLAY_NAME)
        _mark(overlay, "overlay")
        overlay.CreateDefaultDisplayNodes()
        _mark(overlay.GetDisplayNode(), "overlay display")
    slicer.util.updateVolumeFromArray(overlay, labels)
    overlay.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(preview.ijk_to_ras))
    overlay.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    display = overlay.GetDisplayNode()
    if display.GetColorNodeID() != colours.GetID():
        display.SetAndObserveColorNodeID(colours.GetID())
    if composite_node.GetLabelVolumeID() != overlay.GetID():
        overlay.SetAttribute(_PREVIOUS_LABEL_VOLUME, composite_node.GetLabelVolumeID() or "")
        overlay.SetAttribute(_PREVIOUS_LABEL_OPACITY, repr(composite_node.GetLabelOpacity()))
        composite_node.SetLabelVolumeID(overlay.GetID())
        composite_node.SetLabelOpacity(opacity)
    return overlay


def _restore_views(scene, overlay) -> None:
    previous_id = overlay.GetAttribute(_PREVIOUS_LABEL_VOLUME) or None
    if previous_id is not None and scene.GetNodeByID(previous_id) is None:
        previous_id = None
    opacity_text = overlay.GetAttribute(_PREVIOUS_LABEL_OPACITY)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        if composite.GetLabelVolumeID() == overlay.GetID():
            composite.SetLabelVolumeID(previous_id)
            if opacity_text:
                composite.SetLabelOpacity(float(opacity_text))


def remove_slice_preview(scene) -> int:
    """Remove every live-preview node and give each view back the label layer it had before.

    Returns:
        How many nodes were removed (0 when there was no preview).
    """
    nodes = preview_nodes(scene)
    for node in nodes:
        if node.GetAttribute(PREVIEW_NODE_ATTRIBUTE) == "overlay":
            _restore_views(scene, node)
    removed = 0
    for node in nodes:
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)
            removed += 1
    return removed
