"""Inference feeds the model slices resized exactly as training resizes them (torch bilinear)."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from KDSegmentationLib.imaging.image_files import read_image
from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.inference.preprocessing import window_to_unit
from KDSegmentationLib.inference.slice_resampling import resize_slices


@pytest.fixture(scope="module")
def real_slices(shared_data):
    """Six windowed axial slices (512 x 512) of the real DICOM CT, canonical orientation."""
    image = to_canonical(read_image(shared_data / "ct" / "totalsegmentator_dicom" / "example_ct_dicom"))
    return window_to_unit(sitk.GetArrayFromImage(image)[7:13], (-125, 275))


@pytest.mark.parametrize("out_hw", [(224, 224), (64, 64), (300, 180)])
def test_lib_resize_equals_torch_bilinear_on_real_ct(real_slices, out_hw):
    # Training resizes with F.interpolate(bilinear, align_corners=False): inference must feed the same.
    trained_on = F.interpolate(torch.from_numpy(real_slices)[:, None], size=out_hw, mode="bilinear",
                               align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(resize_slices(real_slices, out_hw), trained_on, atol=1e-4)  # torch: float32 positions
