"""Test helpers: read files with Slicer's own reader, export segments, compare in physical space."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.imaging.slicer_geometry import ijk_to_ras_from_image, image_from_kji_array


def load_volume(app, path: Path, name: str):
    """A scalar volume node read by ``vtkSlicerVolumesLogic`` (Slicer's archetype reader)."""
    node = app.volumes_logic.AddArchetypeVolume(str(path), name)
    assert node is not None and node.GetImageData() is not None, f"Slicer could not read {path}"
    return node


def load_dicom_series(app, folder: Path, name: str):
    """A DICOM series read as Slicer's DICOM plugin does: the files sorted along the slice
    normal, then ``AddArchetypeScalarVolume(first, name, 0, files)`` (DICOMScalarVolumePlugin)."""
    import pydicom
    import vtk

    def position(path: Path) -> float:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
        orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        return float(normal @ np.asarray(header.ImagePositionPatient, dtype=float))

    files = sorted((p for p in folder.iterdir() if p.is_file()), key=position)
    file_list = vtk.vtkStringArray()
    for path in files:
        file_list.InsertNextValue(str(path))
    node = app.volumes_logic.AddArchetypeScalarVolume(str(files[0]), name, 0, file_list)
    assert node is not None and node.GetImageData() is not None, f"Slicer could not read {folder}"
    return node


def load_stl_as_segmentation(app, path: Path, name: str):
    """A segmentation node made from an STL file the way Slicer's segmentation reader does it
    (qSlicerSegmentationsReader, a Qt class): one segment whose source representation is
    "Closed surface", with 2D display set to the surface."""
    import slicer

    storage = slicer.vtkMRMLModelStorageNode()
    storage.SetFileName(str(path))
    model = slicer.vtkMRMLModelNode()
    assert storage.ReadData(model)
    segment = slicer.vtkSegment()
    segment.SetName(name)
    closed_surface = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    segment.AddRepresentation(closed_surface, model.GetPolyData())
    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.SetSourceRepresentationToClosedSurface()
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetPreferredDisplayRepresentationName2D(closed_surface)
    node.GetSegmentation().AddSegment(segment)
    return node


def exported_segments(app, segmentation_node, reference_volume) -> Dict[str, sitk.Image]:
    """Each segment exported alone with ``ExportSegmentsToLabelmapNode`` onto the reference
    volume's grid, as a SimpleITK image (value 1 inside), keyed by segment name."""
    import vtk

    import slicer

    scene = app.scene
    segmentation = segmentation_node.GetSegmentation()
    images = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        before = scene_state(scene)
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        try:
            assert app.segmentations_logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap,
                                                                        reference_volume)
            matrix = vtk.vtkMatrix4x4()
            labelmap.GetIJKToRASMatrix(matrix)
            array = np.array(slicer.util.arrayFromVolume(labelmap), copy=True)
            images[segmentation.GetSegment(segment_id).GetName()] = image_from_kji_array(
                array, slicer.util.arrayFromVTKMatrix(matrix))
        finally:
            remove_nodes_added_since(scene, before)  # the export also adds a colour table
    return images


def segment_array(app, segmentation_node, segment_id: str, reference_volume) -> np.ndarray:
    """One segment on the reference volume's grid (K, J, I), via ``ExportSegmentsToLabelmapNode``
    (``slicer.util.arrayFromSegmentBinaryLabelmap`` needs ``slicer.mrmlScene``, absent here)."""
    import vtk

    import slicer

    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    before = scene_state(app.scene)
    labelmap = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        assert app.segmentations_logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap,
                                                                    reference_volume)
        return np.array(slicer.util.arrayFromVolume(labelmap), copy=True)
    finally:
        remove_nodes_added_since(app.scene, before)


def paint_segment(app, segmentation_node, segment_id: str, mask_kji: np.ndarray, reference_volume) -> None:
    """Replace a segment's voxels by ``mask_kji`` on the reference volume's grid."""
    import vtk

    import slicer

    before = scene_state(app.scene)
    labelmap = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        slicer.util.updateVolumeFromArray(labelmap, mask_kji.astype(np.uint8))
        matrix = vtk.vtkMatrix4x4()
        reference_volume.GetIJKToRASMatrix(matrix)
        labelmap.SetIJKToRASMatrix(matrix)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        assert app.segmentations_logic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, ids)
    finally:
        remove_nodes_added_since(app.scene, before)


def assert_same_grid_points(a: sitk.Image, b: sitk.Image) -> None:
    """The voxel centres of ``a`` and ``b`` coincide: index maps between them are signed
    permutations plus whole-voxel shifts (so nearest-neighbour resampling is exact)."""
    mapping = np.linalg.inv(ijk_to_ras_from_image(b)) @ ijk_to_ras_from_image(a)
    np.testing.assert_allclose(mapping[:3], np.round(mapping[:3]), atol=1e-3)
    assert abs(round(np.linalg.det(mapping[:3, :3]))) == 1


def assert_equal_in_physical_space(ours: sitk.Image, theirs: sitk.Image, what: str) -> None:
    """Every voxel of ``ours`` equals the voxel of ``theirs`` at the same physical point (and
    ``ours`` lies inside ``theirs``)."""
    assert_same_grid_points(ours, theirs)
    outside = 255
    resampled = sitk.Resample(theirs, ours, sitk.Transform(), sitk.sitkNearestNeighbor, outside, sitk.sitkUInt8)
    theirs_here = sitk.GetArrayViewFromImage(resampled)
    assert not np.any(theirs_here == outside), f"{what}: part of the Slicer grid lies outside the CLI output"
    ours_array = sitk.GetArrayViewFromImage(ours)
    differing = int(np.count_nonzero((ours_array > 0) != (theirs_here > 0)))
    assert differing == 0, f"{what}: {differing} voxels differ from the CLI output"


def segment_masks_of_cli_output(cli_labels: sitk.Image, names_by_value: Dict[int, str]) -> Dict[str, sitk.Image]:
    """One binary image per label value of ``kdseg segment``'s output, keyed by segment name."""
    masks = {}
    for value, name in names_by_value.items():
        mask = sitk.Cast(cli_labels == value, sitk.sitkUInt8)
        masks[name] = mask
    return masks


def voxel_counts(images: Dict[str, sitk.Image]) -> Dict[str, int]:
    return {name: int(np.count_nonzero(sitk.GetArrayViewFromImage(image))) for name, image in images.items()}


def scene_state(scene) -> List[str]:
    """IDs of the scene's nodes, in order."""
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def remove_nodes_added_since(scene, before: Sequence[str]) -> None:
    kept = set(before)
    for node in [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]:
        if node.GetID() not in kept and scene.IsNodePresent(node):
            scene.RemoveNode(node)
