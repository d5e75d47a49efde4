"""Writing a result into the scene: existing outputs, failures, hierarchy, table, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from KDSegmentationLib.errors import InputImageError
from KDSegmentationLib.weights.model_registry import labels_from_anatomy
from KDSegmentationLib.resources import sample_ct_path
from KDSegmentationLib.slicer_support.module_segmentation import VolumeSegmentation, segment_specs
from KDSegmentationLib.inference.label_volumes import label_volumes_ml
from KDSegmentationMRML.result_nodes import VOLUME_TABLE_REFERENCE_ROLE, apply_segmentation_result
from KDSegmentationMRML.volume_input import first_ct_volume, read_volume_input
from KDSegmentationMRML.volume_table import table_rows

from slicer_volumes import load_stl_as_segmentation, load_volume, paint_segment, scene_state, segment_array


class _RefusingImport:
    """The real segmentations logic, except that the label-map import reports failure
    (as Slicer does for a target it cannot import into)."""

    def __init__(self, logic):
        self._logic = logic

    def ImportLabelmapToSegmentationNode(self, *args):
        self._logic.ImportLabelmapToSegmentationNode(*args)  # really imports, then "fails"
        return False


@pytest.fixture
def sample(app):
    return load_volume(app, sample_ct_path(), "sample")


def _result_from_reference_labels(volume, shared_data):
    """A VolumeSegmentation built from TotalSegmentator's labels of the same CT (no model)."""
    import SimpleITK as sitk

    from KDSegmentationLib.anatomy import SYNAPSE_ORGANS

    data = read_volume_input(volume)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(
        shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz")))
    totalseg_ids = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "stomach": 6,
                    "pancreas": 7, "aorta": 52}
    labels = np.zeros(reference.shape, np.uint8)
    for organ in SYNAPSE_ORGANS:
        labels[reference == totalseg_ids[organ.name]] = organ.index
    assert labels.shape == data.array_kji.shape
    names = {label.index: label.name for label in labels_from_anatomy()[1:]}
    spacing = np.linalg.norm(data.ijk_to_ras[:3, :3], axis=0)

    class _Card:
        def foreground_labels(self):
            return list(labels_from_anatomy()[1:])

    return VolumeSegmentation(labels, data.ijk_to_ras, segment_specs(_Card()), label_volumes_ml(labels, spacing, names),
                              {}, "cpu", "reference", "TotalSegmentator labels", "0", [],
                              {label.name: label.display_name for label in labels_from_anatomy()[1:]})


def _user_segmentation(app, volume, name="user's work"):
    """A segmentation the user made: two painted segments on the volume's grid."""
    import slicer

    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    node.CreateDefaultDisplayNodes()
    shape = tuple(reversed(volume.GetImageData().GetDimensions()))
    painted = {}
    for segment_name, box in (("Tumour", np.s_[50:60, 40:50, 40:60]), ("Cyst", np.s_[20:25, 60:70, 70:80])):
        mask = np.zeros(shape, np.uint8)
        mask[box] = 1
        segment_id = node.GetSegmentation().AddEmptySegment("", segment_name, [0.1, 0.8, 0.2])
        paint_segment(app, node, segment_id, mask, volume)
        painted[segment_id] = mask
    return node, painted


def _segment_arrays(app, node, volume):
    import slicer

    segmentation = node.GetSegmentation()
    arrays = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        arrays[segment_id] = (segmentation.GetSegment(segment_id).GetName(),
                              segment_array(app, node, segment_id, volume))
    return arrays


def test_new_output_goes_next_to_the_input_in_the_hierarchy(app, sample, shared_data):
    import vtk

    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(app.scene)
    # As the DICOM module files a loaded series: Patient > Study > volume.
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    sh.CreateItem(study, sample)
    result = _result_from_reference_labels(sample, shared_data)
    nodes = apply_segmentation_result(app.scene, app.segmentations_logic, result, sample, show_3d=False)
    assert sh.GetItemParent(sh.GetItemByDataNode(nodes.segmentation_node)) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(nodes.table_node)) == study
    assert nodes.segmentation_node.GetName() == f"{sample.GetName()} organs"
    segmentation = nodes.segmentation_node.GetSegmentation()
    for spec in result.segments:
        segment_id = segmentation.GetSegmentIdBySegmentName(spec.name)
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetName() == spec.name
        np.testing.assert_allclose(segment.GetColor(), spec.color)
        tag = vtk.reference("")
        assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag) and str(tag) == spec.terminology
        mask = segment_array(app, nodes.segmentation_node, segment_id, sample)
        np.testing.assert_array_equal(mask > 0, result.labels_kji == spec.label_value, err_msg=spec.name)
    assert table_rows(nodes.table_node) == [(result.display_names[name], volume)
                                            for name, volume in result.volumes_ml.items()]


def test_rerun_into_the_same_output_reuses_its_table(app, sample, shared_data):
    result = _result_from_reference_labels(sample, shared_data)
    first = apply_segmentation_result(app.scene, app.segmentations_logic, result, sample, show_3d=False)
    nodes_after_first = scene_state(app.scene)
    second = apply_segmentation_result(app.scene, app.segmentations_logic, result, sample,
                                       first.segmentation_node, show_3d=False)
    assert second.segmentation_node is first.segmentation_node and second.table_node is first.table_node
    assert scene_state(app.scene) == nodes_after_first
    assert first.segmentation_node.GetNodeReference(VOLUME_TABLE_REFERENCE_ROLE) is first.table_node
    assert first.segmentation_node.GetSegmentation().GetNumberOfSegments() == len(result.segments)


def test_closed_surface_output_receives_the_result(app, sample, shared_data, tmp_path):
    import vtk

    import slicer

    # An output the user loaded from STL: its source representation is "Closed surface".
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*sample.GetOrigin())
    sphere.SetRadius(30.0)
    writer = vtk.vtkSTLWriter()
    writer.SetFileName(str(tmp_path / "model.stl"))
    writer.SetInputConnection(sphere.GetOutputPort())
    writer.Write()
    output = load_stl_as_segmentation(app, tmp_path / "model.stl", "from STL")
    closed_surface = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    assert output.GetSegmentation().GetSourceRepresentationName() == closed_surface

    result = _result_from_reference_labels(sample, shared_data)
    nodes = apply_segmentation_result(app.scene, app.segmentations_logic, result, sample, output, show_3d=True)
    assert nodes.segmentation_node is output
    segmentation = output.GetSegmentation()
    assert segmentation.GetSourceRepresentationName() == \
        slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        [spec.name for spec in result.segments]
    liver = segmentation.GetSegmentIdBySegmentName("Liver")
    np.testing.assert_array_equal(segment_array(app, output, liver, sample) > 0,
                                  result.labels_kji == 5)
    assert segmentation.ContainsRepresentation(closed_surface)
    # The reader had set 2D display to the surface; slices show the new labelmap instead.
    assert output.GetDisplayNode().GetPreferredDisplayRepresentationName2D() == \
        slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()


@pytest.mark.parametrize("existing", [False, True], ids=["new output", "existing output"])
def test_failing_import_leaves_the_scene_as_it_was(app, sample, shared_data, existing):
    output, painted = _user_segmentation(app, sample) if existing else (None, {})
    if existing:
        # A volume table from an earlier run that must not be overwritten either.
        earlier = apply_segmentation_result(app.scene, app.segmentations_logic,
                                            _result_from_reference_labels(sample, shared_data), sample, show_3d=False)
        table = earlier.table_node
        output.SetNodeReferenceID(VOLUME_TABLE_REFERENCE_ROLE, table.GetID())
        rows_before = table_rows(table)
    before = scene_state(app.scene)
    segments_before = _segment_arrays(app, output, sample) if existing else {}

    result = _result_from_reference_labels(sample, shared_data)
    with pytest.raises(RuntimeError, match="could not import the label map"):
        apply_segmentation_result(app.scene, _RefusingImport(app.segmentations_logic), result, sample, output)

    assert scene_state(app.scene) == before
    if existing:
        after = _segment_arrays(app, output, sample)
        assert list(after) == list(segments_before) == list(painted)
        for segment_id, (name, mask) in segments_before.items():
            assert after[segment_id][0] == name
            np.testing.assert_array_equal(after[segment_id][1], mask)
            np.testing.assert_array_equal(mask, painted[segment_id])
        assert table_rows(table) == rows_before


def test_labels_that_no_longer_fit_the_volume_change_nothing(app, sample, shared_data):
    import vtk

    result = _result_from_reference_labels(sample, shared_data)
    before = scene_state(app.scene)
    moved = vtk.vtkMatrix4x4()
    sample.GetIJKToRASMatrix(moved)
    moved.SetElement(0, 3, moved.GetElement(0, 3) + 5.0)
    sample.SetIJKToRASMatrix(moved)
    with pytest.raises(ValueError, match="moved"):
        apply_segmentation_result(app.scene, app.segmentations_logic, result, sample)
    cropped = VolumeSegmentation(**{**result.__dict__, "labels_kji": result.labels_kji[1:]})
    with pytest.raises(ValueError, match="shape"):
        apply_segmentation_result(app.scene, app.segmentations_logic, cropped, sample)
    undescribed = VolumeSegmentation(**{**result.__dict__, "segments": result.segments[:-1]})
    sample.SetIJKToRASMatrix(_matrix(result.ijk_to_ras))  # back in place
    with pytest.raises(ValueError, match=r"label values \[8\] have no segment description"):
        apply_segmentation_result(app.scene, app.segmentations_logic, undescribed, sample)
    assert scene_state(app.scene) == before


def _matrix(array):
    import slicer

    return slicer.util.vtkMatrixFromArray(array)


def test_volume_input_reads_voxels_matrix_and_transform(app, sample):
    import vtk

    import slicer

    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    sample.SetAndObserveTransformNodeID(transform.GetID())
    data = read_volume_input(sample)
    assert data.transform_node_id == transform.GetID()
    view = slicer.util.arrayFromVolume(sample)
    np.testing.assert_array_equal(data.array_kji, view)
    assert not np.shares_memory(data.array_kji, view)  # a copy the worker may keep
    matrix = vtk.vtkMatrix4x4()
    sample.GetIJKToRASMatrix(matrix)
    np.testing.assert_array_equal(data.ijk_to_ras, slicer.util.arrayFromVTKMatrix(matrix))

    labels = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(labels, np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(InputImageError, match="not a CT volume"):
        read_volume_input(labels)
    with pytest.raises(InputImageError, match="no image data"):
        read_volume_input(app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"))


def test_auto_selection_picks_the_first_ct_even_after_a_label_map(app, shared_data):
    import slicer

    assert first_ct_volume(app.scene) is None
    labels = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels loaded first")
    slicer.util.updateVolumeFromArray(labels, np.zeros((2, 3, 4), np.uint8))
    assert app.scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is labels  # what the module used to take
    assert first_ct_volume(app.scene) is None
    ct = load_volume(app, sample_ct_path(), "ct")
    load_volume(app, shared_data / "ct" / "totalsegmentator_example" / "example_ct_sm.nii.gz", "second ct")
    assert first_ct_volume(app.scene) is ct
