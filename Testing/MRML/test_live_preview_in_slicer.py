"""The live preview against Slicer's real slice nodes and slice logic, on the sample CT with the bundled model.

What the Red view shows is read back from ``vtkMRMLSliceLogic``'s label layer (Slicer's own
reslice of the overlay onto the view's plane) and compared, pixel for pixel, with a second
view showing the full run's labels (before 3D post-processing) on the same plane.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import vtk
from vtk.util import numpy_support

import slicer

from KDSegmentationLib.imaging.slice_under_view import ViewState
from KDSegmentationLib.inference.pipeline import SegmentationOptions
from KDSegmentationLib.inference.slice_preview import PreviewVolume
from KDSegmentationLib.resources import sample_ct_path
from KDSegmentationLib.slicer_support.live_preview import registry_segmenter_factory
from KDSegmentationLib.slicer_support.module_segmentation import segment_volume_array
from KDSegmentationLib.slicer_support.run_settings import run_settings
from KDSegmentationLib.weights.model_registry import load_registry
from KDSegmentationMRML.live_preview_controller import LivePreviewController
from KDSegmentationMRML.preview_overlay import COLORS_NAME, preview_nodes, remove_slice_preview
from KDSegmentationMRML.slice_view import slice_under_view, view_slice_node
from KDSegmentationMRML.volume_input import read_volume_input

from slicer_volumes import load_volume

LIVER, SPLEEN = 5, 7
WAIT = 60.0


@pytest.fixture
def views(app):
    """Red, Yellow and Green slice views with their slice logics, as Slicer's layout creates them."""
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(app.scene)
    logics = {}
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(app.scene)
        logic.AddSliceNode(name)
        logic.GetSliceNode().SetOrientation(orientation)
        logics[name] = logic
    yield logics
    for logic in logics.values():
        logic.SetMRMLScene(None)


@pytest.fixture
def sample(app, views):
    """The sample CT read by Slicer, shown in every view (Red fitted to it)."""
    volume = load_volume(app, sample_ct_path(), "live preview CT")
    for logic in views.values():
        logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())
        logic.GetSliceNode().SetDimensions(244, 202, 1)
        logic.FitSliceToBackground()
    return volume


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture
def settings(registry):
    return run_settings(registry, device="cpu", threads=1)[0]


@pytest.fixture
def controller(app, registry):
    controller = LivePreviewController(app.scene, registry_segmenter_factory(registry))
    yield controller
    assert controller.close(timeout=WAIT)


def _full_labels_node(app, volume, segmenter, name="full run"):
    """The full run's labels before 3D post-processing, as a label map node on the input's grid."""
    data = read_volume_input(volume)
    result = segment_volume_array(data.array_kji, data.ijk_to_ras, segmenter, SegmentationOptions(postprocess=False))
    node = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, result.labels_kji)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(result.ijk_to_ras))
    node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    return node


def _label_layer_values(logic) -> np.ndarray:
    """Label values the view's label layer shows (Slicer's reslice onto the view plane), (rows, columns)."""
    reslice = logic.GetLabelLayer().GetReslice()
    reslice.Update()
    image = reslice.GetOutput()
    columns, rows, _ = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns).copy()


def _label_layer_rgba(logic) -> np.ndarray:
    producer = logic.GetLabelLayer().GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    columns, rows, _ = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, -1).copy()


def _twin_view(views, source_name="Red", twin_name="Yellow"):
    """Put ``twin_name``'s view on exactly ``source_name``'s plane and field of view."""
    source, twin = views[source_name].GetSliceNode(), views[twin_name].GetSliceNode()
    twin.SetDimensions(*source.GetDimensions())
    twin.SetFieldOfView(*source.GetFieldOfView())
    twin.GetSliceToRAS().DeepCopy(source.GetSliceToRAS())
    twin.UpdateMatrices()
    return views[twin_name]


def _settle(controller, timeout=WAIT):
    """Poll like the module's timer until the worker is idle; returns the last status."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = controller.poll(yield_seconds=0.02) or status
        if not controller.busy:
            return controller.poll() or status
    raise AssertionError("the preview worker did not finish")


def _organ_offset(volume, label_kji, value):
    """A Red slice offset through the middle of the slices holding ``value`` (the input's K axis is axial)."""
    slices = np.flatnonzero((label_kji == value).any(axis=(1, 2)))
    k = int(slices[slices.size // 2])
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return (slicer.util.arrayFromVTKMatrix(matrix) @ np.array([0, 0, k, 1.0]))[2]


def _warp_node(app):
    """A non-linear (thin-plate spline) transform node."""
    bend = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point in ((0, 0, 0), (100, 0, 0), (0, 100, 0), (0, 0, 100)):
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + 5, point[1], point[2])
    bend.SetSourceLandmarks(source)
    bend.SetTargetLandmarks(target)
    bend.SetBasisToR()
    warp = app.scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warp.SetAndObserveTransformToParent(bend)
    return warp


# --- which slice is under the view --------------------------------------------------------


def test_slice_under_the_red_view_is_the_slice_slicer_reports(app, views, sample):
    red = views["Red"]
    prepared = PreviewVolume.from_kji_array(*_array_and_matrix(sample))
    canonical_from_input = np.linalg.inv(prepared.ijk_to_ras) @ _array_and_matrix(sample)[1]
    first = red.GetSliceOffset()
    for step in (0, 1, 17, -30, 40):
        red.SetSliceOffset(first + 3.0 * step)
        slicer_k = red.GetSliceIndexFromOffset(red.GetSliceOffset(), sample) - 1  # Slicer's is 1-based
        ours = slice_under_view(red.GetSliceNode(), sample, prepared)
        if slicer_k < 0:
            assert ours.state is ViewState.OUTSIDE
            continue
        assert ours.state is ViewState.AXIAL
        expected = canonical_from_input @ np.array([0, 0, slicer_k, 1.0])
        assert ours.index == int(round(expected[2]))
    # A coronal Red view lies in a volume plane too (Slicer reports a J index), but not an axial one.
    red.GetSliceNode().SetOrientation("Coronal")
    assert red.GetSliceIndexFromOffset(red.GetSliceOffset(), sample) > 0
    assert slice_under_view(red.GetSliceNode(), sample, prepared).state is ViewState.NOT_AXIAL


def _array_and_matrix(volume):
    data = read_volume_input(volume)
    return data.array_kji, data.ijk_to_ras


def test_parent_transforms_linear_and_not(app, views, sample):
    red = views["Red"]
    prepared = PreviewVolume.from_kji_array(*_array_and_matrix(sample))
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tilt")
    tilt = vtk.vtkTransform()
    tilt.Translate(5.0, -12.0, 30.0)
    tilt.RotateX(20.0)
    transform.SetMatrixTransformToParent(tilt.GetMatrix())
    sample.SetAndObserveTransformNodeID(transform.GetID())
    assert slice_under_view(red.GetSliceNode(), sample, prepared).state is ViewState.NOT_AXIAL
    red.RotateSliceToLowestVolumeAxes()  # Slicer's "Rotate to volume plane"
    red.SetSliceOffset(red.GetSliceOffset())
    slicer_k = red.GetSliceIndexFromOffset(red.GetSliceOffset(), sample) - 1
    ours = slice_under_view(red.GetSliceNode(), sample, prepared)
    assert slicer_k >= 0 and ours.state is ViewState.AXIAL and ours.index == slicer_k  # LPS->RAS keeps k

    warp = _warp_node(app)
    sample.SetAndObserveTransformNodeID(warp.GetID())
    result = slice_under_view(red.GetSliceNode(), sample, prepared)
    assert result.state is ViewState.NONLINEAR_TRANSFORM and "non-linear" in result.hint


# --- the overlay ----------------------------------------------------------------------------


def test_red_view_shows_the_full_runs_slice_in_organ_colours(app, views, sample, controller, settings, registry,
                                                             bundled_segmenter):
    red = views["Red"]
    full = _full_labels_node(app, sample, bundled_segmenter)
    full_kji = slicer.util.arrayFromVolume(full)
    red.SetSliceOffset(_organ_offset(sample, full_kji, SPLEEN))
    user_labels = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "user's label map")
    slicer.util.updateVolumeFromArray(user_labels, np.zeros_like(full_kji))
    red.GetSliceCompositeNode().SetLabelVolumeID(user_labels.GetID())
    red.GetSliceCompositeNode().SetLabelOpacity(0.8)

    controller.start(sample, settings)
    status = _settle(controller)
    assert status.startswith("Live preview: axial slice")
    overlay_id = red.GetSliceCompositeNode().GetLabelVolumeID()
    overlay = app.scene.GetNodeByID(overlay_id)
    assert overlay in preview_nodes(app.scene) and overlay.GetHideFromEditors() and not overlay.GetSaveWithScene()
    shown = _label_layer_values(red)
    twin = _twin_view(views)
    twin.GetSliceCompositeNode().SetLabelVolumeID(full.GetID())
    expected = _label_layer_values(twin)
    assert {LIVER, SPLEEN} <= set(np.unique(expected)), "the slice must show organs"
    np.testing.assert_array_equal(shown, expected)

    # Coloured and named like the organs; background transparent; in the Red view only.
    card = registry.get(settings.model_id)
    colours = overlay.GetDisplayNode().GetColorNode()
    assert colours.GetName() == COLORS_NAME
    rgba = _label_layer_rgba(red)
    for label in card.foreground_labels():
        assert colours.GetColorName(label.index) == label.display_name
        if label.index in (LIVER, SPLEEN):
            assert (rgba[shown == label.index] == (*label.color, 255)).all(), label.name
    assert (rgba[shown == 0][:, 3] == 0).all()
    for name in ("Yellow", "Green"):
        assert views[name].GetSliceCompositeNode().GetLabelVolumeID() != overlay_id

    # Switching off removes every preview node and gives Red its label layer back.
    controller.stop()
    assert preview_nodes(app.scene) == []
    assert red.GetSliceCompositeNode().GetLabelVolumeID() == user_labels.GetID()
    assert red.GetSliceCompositeNode().GetLabelOpacity() == pytest.approx(0.8)



def test_scrolling_shows_the_newest_slice_and_oblique_views_get_the_hint(app, views, sample, controller, settings):
    red = views["Red"]
    controller.start(sample, settings)
    first = red.GetSliceOffset()
    for step in range(25):  # a fast scroll: every offset change is a request, most are never computed
        red.SetSliceOffset(first - 3.0 * step)
    _settle(controller)
    overlay = app.scene.GetNodeByID(red.GetSliceCompositeNode().GetLabelVolumeID())
    slicer_k = red.GetSliceIndexFromOffset(red.GetSliceOffset(), sample) - 1
    matrix = vtk.vtkMatrix4x4()
    overlay.GetIJKToRASMatrix(matrix)
    sample_matrix = vtk.vtkMatrix4x4()
    sample.GetIJKToRASMatrix(sample_matrix)
    shown_k = (np.linalg.inv(slicer.util.arrayFromVTKMatrix(sample_matrix))
               @ slicer.util.arrayFromVTKMatrix(matrix) @ np.array([0, 0, 0, 1.0]))[2]
    assert round(shown_k) == slicer_k, "the overlay must be the slice now under view, not an older one"

    red.GetSliceNode().SetOrientation("Sagittal")
    status = _settle(controller)
    assert "preview needs an axial view" in status
    assert preview_nodes(app.scene) == [] and not red.GetSliceCompositeNode().GetLabelVolumeID()
    red.GetSliceNode().SetOrientation("Axial")
    red.SetSliceOffset(first)
    assert _settle(controller).startswith("Live preview: axial slice")
    assert preview_nodes(app.scene)


def test_preview_follows_a_transformed_volume_in_the_rotated_view(app, views, sample, controller, settings,
                                                                 bundled_segmenter):
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tilt")
    tilt = vtk.vtkTransform()
    tilt.Translate(5.0, -12.0, 30.0)
    tilt.RotateX(20.0)
    transform.SetMatrixTransformToParent(tilt.GetMatrix())
    sample.SetAndObserveTransformNodeID(transform.GetID())
    full = _full_labels_node(app, sample, bundled_segmenter)
    red = views["Red"]
    controller.start(sample, settings)
    assert "preview needs an axial view" in _settle(controller)
    red.RotateSliceToLowestVolumeAxes()
    red.SetSliceOffset(_organ_offset_world(red, sample, slicer.util.arrayFromVolume(full), LIVER))
    assert _settle(controller).startswith("Live preview: axial slice")
    shown = _label_layer_values(red)
    twin = _twin_view(views)
    twin.GetSliceCompositeNode().SetLabelVolumeID(full.GetID())
    expected = _label_layer_values(twin)
    assert LIVER in expected
    np.testing.assert_array_equal(shown, expected)


def _organ_offset_world(logic, volume, label_kji, value):
    """The offset along the (rotated) view normal of the middle slice holding ``value``."""
    slices = np.flatnonzero((label_kji == value).any(axis=(1, 2)))
    k = int(slices[slices.size // 2])
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    world = vtk.vtkMatrix4x4()
    volume.GetParentTransformNode().GetMatrixTransformToWorld(world)
    point = slicer.util.arrayFromVTKMatrix(world) @ slicer.util.arrayFromVTKMatrix(matrix) @ np.array([60, 50, k, 1.0])
    slice_to_ras = slicer.util.arrayFromVTKMatrix(logic.GetSliceNode().GetSliceToRAS())
    return float(slice_to_ras[:3, 2] @ point[:3])


def test_every_preview_node_goes_on_input_change_and_scene_close(app, views, sample, controller, settings):
    red = views["Red"]
    controller.start(sample, settings)
    _settle(controller)
    assert len(preview_nodes(app.scene)) == 3  # overlay, its display node, the colour table
    other = load_volume(app, sample_ct_path(), "live preview CT 2")
    controller.start(other, settings)  # the module restarts the preview when the input changes
    assert preview_nodes(app.scene) == []
    _settle(controller)
    overlay = app.scene.GetNodeByID(red.GetSliceCompositeNode().GetLabelVolumeID())
    assert overlay in preview_nodes(app.scene)

    app.scene.InvokeEvent(slicer.vtkMRMLScene.StartCloseEvent)  # what closing the scene sends first
    assert preview_nodes(app.scene) == [] and not controller.active
    red.SetSliceOffset(red.GetSliceOffset() + 3.0)  # no longer observed
    assert _settle(controller) is None  # the worker only releases its copy of the volume
    assert preview_nodes(app.scene) == []


def test_remove_slice_preview_on_a_scene_without_preview(app, views):
    assert remove_slice_preview(app.scene) == 0


def test_the_volume_is_copied_again_only_when_its_voxels_or_geometry_change(app, views, sample):
    from KDSegmentationMRML.slice_view import preview_input

    first = preview_input(sample)
    sample.SetName("renamed CT")
    sample.GetDisplayNode().SetAutoWindowLevel(0)
    sample.GetDisplayNode().SetWindowLevel(400, 40)
    assert preview_input(sample, first) is first
    sample.SetSpacing(3.0, 3.0, 2.5)
    moved = preview_input(sample, first)
    assert moved is not first and moved.ijk_to_ras[2, 2] == pytest.approx(2.5)
    slicer.util.arrayFromVolume(sample)[0, 0, 0] += 100
    slicer.util.arrayFromVolumeModified(sample)
    edited = preview_input(sample, moved)
    assert edited is not moved and edited.array_kji[0, 0, 0] == moved.array_kji[0, 0, 0] + 100


def test_a_model_that_cannot_open_stops_the_preview_with_its_message(app, views, sample, settings):
    from KDSegmentationLib.errors import WeightsError

    def unavailable(settings):
        raise WeightsError("Weights of model kdseg-student-shsa-demo are not available offline.",
                           "Click Segment once to download them.")

    controller = LivePreviewController(app.scene, unavailable)
    try:
        controller.start(sample, settings)
        status = _settle(controller)
        assert status == ("Weights of model kdseg-student-shsa-demo are not available offline. "
                          "Click Segment once to download them.")
        assert not controller.active and preview_nodes(app.scene) == []
    finally:
        assert controller.close(timeout=WAIT)


def test_a_non_linear_parent_transform_gets_the_hint(app, views, sample, controller, settings):
    warp = _warp_node(app)
    controller.start(sample, settings)
    assert _settle(controller).startswith("Live preview: axial slice")
    sample.SetAndObserveTransformNodeID(warp.GetID())  # observed: the preview reacts at once
    assert "non-linear" in _settle(controller)
    assert preview_nodes(app.scene) == [] and controller.active
    sample.SetAndObserveTransformNodeID(None)
    assert _settle(controller).startswith("Live preview: axial slice")
