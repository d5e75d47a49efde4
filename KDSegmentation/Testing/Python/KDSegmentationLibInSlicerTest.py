"""KDSegmentationLib checked against Slicer's own conversions (runs inside Slicer via ctest)."""

import unittest

import numpy as np
import vtk

import sitkUtils
import slicer

from KDSegmentationLib.weights.model_registry import labels_from_anatomy
from KDSegmentationLib.slicer_support.terminology import GENERAL_ANATOMY_CONTEXT, terminology_entry
from KDSegmentationLib.imaging.slicer_geometry import ijk_to_ras_from_image, image_from_kji_array


class KDSegmentationLibInSlicerTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_volume_geometry_matches_sitkUtils(self):
        # An oblique, flipped, anisotropic volume: every term of the matrix matters.
        angle = np.deg2rad(17.0)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
        ijkToRAS = np.eye(4)
        ijkToRAS[:3, :3] = rotation @ np.diag([-1.0, 1.0, 1.0]) @ np.diag([0.7, 0.8, 2.5])
        ijkToRAS[:3, 3] = (12.5, -40.0, 101.0)
        array = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
        volume = slicer.util.addVolumeFromArray(array, ijkToRAS=ijkToRAS, name="oblique")

        ours = image_from_kji_array(slicer.util.arrayFromVolume(volume), ijkToRAS)
        theirs = sitkUtils.PullVolumeFromSlicer(volume)
        np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-6)

        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        np.testing.assert_allclose(ijk_to_ras_from_image(theirs), slicer.util.arrayFromVTKMatrix(matrix), atol=1e-6)

    def test_terminology_entries_deserialize(self):
        logic = slicer.modules.terminologies.logic()
        for label in labels_from_anatomy()[1:]:
            entry = slicer.vtkSlicerTerminologyEntry()
            self.assertTrue(logic.DeserializeTerminologyEntry(terminology_entry(label), entry), label.name)
            # Field by field (vtkSlicerTerminologyEntry.IsValid exists only from Slicer 5.10).
            self.assertEqual(entry.GetTerminologyContextName(), GENERAL_ANATOMY_CONTEXT)
            for coded, expected in ((entry.GetCategoryObject(), label.terminology["category"]),
                                    (entry.GetTypeObject(), label.terminology["type"]),
                                    (entry.GetTypeModifierObject(), label.terminology.get("type_modifier"))):
                expected = expected or {"scheme": "", "code": "", "meaning": ""}
                self.assertEqual((coded.GetCodingSchemeDesignator() or "", coded.GetCodeValue() or "",
                                  coded.GetCodeMeaning() or ""),
                                 (expected["scheme"], expected["code"], expected["meaning"]), label.name)
