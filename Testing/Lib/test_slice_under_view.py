"""Which axial slice a slice view shows, on the real sample CT's geometry (matrices only: pure geometry)."""

import numpy as np
import pytest
import SimpleITK as sitk

from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.imaging.slice_under_view import SliceUnderView, ViewState, axial_slice_under_view
from KDSegmentationLib.imaging.slicer_geometry import ijk_to_ras_from_image
from KDSegmentationLib.resources import sample_ct_path


@pytest.fixture(scope="module")
def canonical():
    """(IJK-to-RAS, (Z, Y, X)) of the sample CT on the canonical grid."""
    image = to_canonical(sitk.ReadImage(str(sample_ct_path())))
    return ijk_to_ras_from_image(image), tuple(reversed(image.GetSize()))


def _rotation(axis, degrees):
    """4x4 rotation about RAS axis 0, 1 or 2."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    matrix = np.eye(4)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


def _axial_view_through(point_ras, rotation=np.eye(4)):
    """SliceToRAS of Slicer's axial preset (x: -R, y: A, normal: S) centred at a point, then rotated."""
    view = np.diag([-1.0, 1.0, 1.0, 1.0])
    view[:3, 3] = point_ras
    return rotation @ view


def _voxel_ras(ijk_to_ras, x, y, z):
    return (ijk_to_ras @ np.array([x, y, z, 1.0]))[:3]


def test_an_axial_view_through_a_voxel_shows_its_slice(canonical):
    ijk_to_ras, shape = canonical
    depth, height, width = shape
    for z in (0, 1, 57, depth - 1):
        for offset in (-0.45, 0.0, 0.45):  # anywhere within the slice's thickness
            view = _axial_view_through(_voxel_ras(ijk_to_ras, width / 2, height / 2, z + offset))
            assert axial_slice_under_view(view, ijk_to_ras, shape) == SliceUnderView(ViewState.AXIAL, z)


def test_panning_flipping_and_in_plane_rotation_keep_the_slice(canonical):
    ijk_to_ras, shape = canonical
    z = 40
    far_outside_in_plane = _voxel_ras(ijk_to_ras, -500, 900, z)
    assert axial_slice_under_view(_axial_view_through(far_outside_in_plane), ijk_to_ras, shape).index == z
    centre = _voxel_ras(ijk_to_ras, 60, 50, z)
    spun = _rotation(2, 33)
    spun[:3, 3] = centre - spun[:3, :3] @ centre  # rotate about the view centre, within the axial plane
    assert axial_slice_under_view(_axial_view_through(centre, spun), ijk_to_ras, shape).index == z
    upside_down = _axial_view_through(centre) @ np.diag([1.0, -1.0, -1.0, 1.0])  # normal pointing inferior
    assert axial_slice_under_view(upside_down, ijk_to_ras, shape).index == z


@pytest.mark.parametrize("axis, degrees, state", [
    (0, 90, ViewState.NOT_AXIAL),   # coronal
    (1, 90, ViewState.NOT_AXIAL),   # sagittal
    (0, 5, ViewState.NOT_AXIAL),    # oblique: crosses many 3 mm slices over 30 cm
    (1, 0.5, ViewState.NOT_AXIAL),  # 0.5 deg over the 363 mm between corner voxels: 1.06 slices
    (1, 0.2, ViewState.AXIAL),      # 0.2 deg over 363 mm: 0.42 slice, still one slice everywhere
])
def test_reformatted_and_oblique_views_are_not_axial(canonical, axis, degrees, state):
    ijk_to_ras, shape = canonical
    centre = _voxel_ras(ijk_to_ras, (shape[2] - 1) / 2, (shape[1] - 1) / 2, 30)
    tilt = _rotation(axis, degrees)
    tilt[:3, 3] = centre - tilt[:3, :3] @ centre
    result = axial_slice_under_view(_axial_view_through(centre, tilt), ijk_to_ras, shape)
    assert result.state is state
    assert result.index == (30 if state is ViewState.AXIAL else None)
    if state is ViewState.NOT_AXIAL:
        assert "preview needs an axial view" in result.hint


def test_views_beyond_the_first_or_last_slice_are_outside(canonical):
    ijk_to_ras, shape = canonical
    for z in (-0.6, -3, shape[0] - 0.4, shape[0] + 10):
        result = axial_slice_under_view(_axial_view_through(_voxel_ras(ijk_to_ras, 10, 10, z)), ijk_to_ras, shape)
        assert result == SliceUnderView(ViewState.OUTSIDE)
        assert "outside the input volume" in result.hint


def test_a_parent_transform_moves_the_slices_with_the_volume(canonical):
    ijk_to_ras, shape = canonical
    parent = _rotation(0, 25) @ _rotation(2, 10)
    parent[:3, 3] = (12.5, -40.0, 7.0)
    to_world = parent @ ijk_to_ras
    z = 70
    centre = (to_world @ np.array([61, 50, z, 1.0]))[:3]
    # The scanner-axial view no longer lies in a slice of the rotated volume...
    assert axial_slice_under_view(_axial_view_through(centre), to_world, shape).state is ViewState.NOT_AXIAL
    # ...a view rotated with it does ("Rotate to volume plane").
    rotated_view = parent @ _axial_view_through(_voxel_ras(ijk_to_ras, 61, 50, z))
    assert axial_slice_under_view(rotated_view, to_world, shape) == SliceUnderView(ViewState.AXIAL, z)


def test_every_state_has_a_hint():
    assert {state: bool(state.hint()) for state in ViewState} == {state: True for state in ViewState}
    assert "non-linear" in ViewState.NONLINEAR_TRANSFORM.hint()


def test_bad_arguments_are_named(canonical):
    ijk_to_ras, shape = canonical
    view = _axial_view_through(_voxel_ras(ijk_to_ras, 0, 0, 0))
    with pytest.raises(ValueError, match="slice_to_ras must be a 4x4 affine"):
        axial_slice_under_view(np.eye(3), ijk_to_ras, shape)
    with pytest.raises(ValueError, match="volume_ijk_to_world must be a 4x4 affine"):
        axial_slice_under_view(view, np.ones((4, 4)), shape)
    with pytest.raises(ValueError, match="shape_zyx"):
        axial_slice_under_view(view, ijk_to_ras, (0, 10, 10))
    flat = view.copy()
    flat[:3, 2] = 0
    with pytest.raises(ValueError, match="non-zero length"):
        axial_slice_under_view(flat, ijk_to_ras, shape)
    with pytest.raises(ValueError, match="tolerance_slices"):
        axial_slice_under_view(view, ijk_to_ras, shape, tolerance_slices=0)
