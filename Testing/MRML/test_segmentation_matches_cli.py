"""The module's MRML layer under Slicer's real libraries gives what `kdseg segment` writes.

Volumes are read by Slicer's own ``vtkSlicerVolumesLogic``, segmented through
``KDSegmentationMRML`` with the shipped model, and every segment is exported back with
``ExportSegmentsToLabelmapNode``; each must equal, voxel for voxel at the same physical
points, the label map the command line writes for the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.cli import main as kdseg
from KDSegmentationLib.inference.pipeline import SegmentationOptions
from KDSegmentationLib.resources import sample_ct_path
from KDSegmentationLib.slicer_support.module_segmentation import segment_volume_array
from KDSegmentationMRML.result_nodes import apply_segmentation_result
from KDSegmentationMRML.volume_input import read_volume_input
from KDSegmentationMRML.volume_table import table_rows

from slicer_volumes import (
    assert_equal_in_physical_space,
    exported_segments,
    load_dicom_series,
    load_volume,
    segment_masks_of_cli_output,
    voxel_counts,
)


def _cli(tmp_path: Path, source: Path):
    """Run `kdseg segment` on ``source``; (label image, volumes mL) it wrote."""
    output, report = tmp_path / "cli_labels.nii.gz", tmp_path / "cli_volumes.json"
    code = kdseg(["segment", str(source), "-o", str(output), "--device", "cpu", "--no-progress",
                  "--volumes-json", str(report)])
    assert code == 0
    return sitk.ReadImage(str(output)), json.loads(report.read_text(encoding="utf-8"))["volumes_ml"]


def _segment_in_scene(app, volume_node, segmenter, output_node=None, show_3d=False):
    data = read_volume_input(volume_node)
    result = segment_volume_array(data.array_kji, data.ijk_to_ras, segmenter, SegmentationOptions())
    nodes = apply_segmentation_result(app.scene, app.segmentations_logic, result, volume_node, output_node,
                                      show_3d=show_3d)
    return result, nodes


def _assert_segments_equal_cli(app, nodes, volume_node, segmenter, cli_labels, cli_volumes):
    card = segmenter.card
    names = {label.index: label.display_name for label in card.foreground_labels()}
    exported = exported_segments(app, nodes.segmentation_node, volume_node)
    assert sorted(exported) == sorted(names.values())
    expected = segment_masks_of_cli_output(cli_labels, names)
    for name in names.values():
        assert_equal_in_physical_space(exported[name], expected[name], name)
    counts = voxel_counts(exported)
    assert sum(counts.values()) > 1000, f"the comparison must not be between empty segments: {counts}"
    # The volume table has one row per kept organ with the volumes the CLI prints.
    display = {label.name: label.display_name for label in card.foreground_labels()}
    rows = table_rows(nodes.table_node)
    assert [name for name, _ in rows] == [display[name] for name in cli_volumes]
    assert [volume for _, volume in rows] == pytest.approx(list(cli_volumes.values()), rel=1e-9, abs=1e-9)
    return counts


@pytest.fixture(scope="session")
def sample_cli(tmp_path_factory):
    return _cli(tmp_path_factory.mktemp("sample_cli"), sample_ct_path())


def test_sample_ct_read_by_slicer_matches_the_cli(app, bundled_segmenter, sample_cli):
    volume = load_volume(app, sample_ct_path(), "sample")
    result, nodes = _segment_in_scene(app, volume, bundled_segmenter, show_3d=True)
    counts = _assert_segments_equal_cli(app, nodes, volume, bundled_segmenter, *sample_cli)
    assert counts["Liver"] > 10000  # the shipped model finds the liver on its sample
    segmentation = nodes.segmentation_node.GetSegmentation()
    assert segmentation.ContainsRepresentation("Closed surface")
    assert nodes.segmentation_node.GetNodeReference(
        nodes.segmentation_node.GetReferenceImageGeometryReferenceRole()) is volume


def test_dicom_series_read_by_slicer_matches_the_cli(app, bundled_segmenter, shared_data, tmp_path):
    folder = shared_data / "ct" / "totalsegmentator_dicom" / "example_ct_dicom"
    volume = load_dicom_series(app, folder, "dicom")
    _, nodes = _segment_in_scene(app, volume, bundled_segmenter)
    _assert_segments_equal_cli(app, nodes, volume, bundled_segmenter, *_cli(tmp_path, folder))


def test_volume_under_a_parent_transform(app, bundled_segmenter, sample_cli):
    import vtk

    volume = load_volume(app, sample_ct_path(), "moved")
    transform_node = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved by the user")
    moved = vtk.vtkTransform()
    moved.Translate(30.0, -12.5, 7.0)
    moved.RotateWXYZ(25.0, 0.3, 0.2, 0.9)
    transform_node.SetMatrixTransformToParent(moved.GetMatrix())
    volume.SetAndObserveTransformNodeID(transform_node.GetID())

    _, nodes = _segment_in_scene(app, volume, bundled_segmenter)
    # The result lives in the volume's own coordinates under the same transform, so it
    # moves with the volume; exported onto the volume it equals the CLI's labels.
    assert nodes.segmentation_node.GetTransformNodeID() == transform_node.GetID()
    _assert_segments_equal_cli(app, nodes, volume, bundled_segmenter, *sample_cli)
    # And in world space it lies where the transformed CT lies: the node's transform to
    # world is the user's transform.
    liver = nodes.segmentation_node.GetSegmentation().GetSegmentIdBySegmentName("Liver")
    local_center = np.array(nodes.segmentation_node.GetSegmentCenter(liver))
    world_center = np.array(nodes.segmentation_node.GetSegmentCenterRAS(liver))
    np.testing.assert_allclose(world_center, moved.TransformPoint(local_center), atol=1e-6)
    assert np.linalg.norm(world_center - local_center) > 10.0


def test_oblique_volume_matches_the_cli(app, bundled_segmenter, tmp_path):
    ct = sitk.ReadImage(str(sample_ct_path()))[:, :, 40:88]  # organ-bearing slices keep it small
    tilt_z, tilt_x = np.deg2rad(17.0), np.deg2rad(-9.0)
    rotation = (np.array([[np.cos(tilt_z), -np.sin(tilt_z), 0], [np.sin(tilt_z), np.cos(tilt_z), 0], [0, 0, 1]])
                @ np.array([[1, 0, 0], [0, np.cos(tilt_x), -np.sin(tilt_x)], [0, np.sin(tilt_x), np.cos(tilt_x)]]))
    ct.SetDirection(tuple((rotation @ np.asarray(ct.GetDirection()).reshape(3, 3)).ravel()))
    path = tmp_path / "oblique_ct.nii.gz"
    sitk.WriteImage(ct, str(path))

    volume = load_volume(app, path, "oblique")
    import vtk

    import slicer

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    direction = slicer.util.arrayFromVTKMatrix(matrix)[:3, :3] / 3.0
    assert abs(direction[0, 1]) > 0.2 and abs(direction[2, 1]) > 0.1  # Slicer really reads it oblique
    _, nodes = _segment_in_scene(app, volume, bundled_segmenter)
    _assert_segments_equal_cli(app, nodes, volume, bundled_segmenter, *_cli(tmp_path, path))
