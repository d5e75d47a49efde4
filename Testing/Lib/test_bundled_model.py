"""The model shipped in Resources/Models: verified, offline, and segmenting the bundled sample CT."""

import json
from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.cli import main
from KDSegmentationLib.weights.model_registry import load_registry
from KDSegmentationLib.resources import sample_ct_path
from KDSegmentationLib.slicer_support.organ_volume_ranges import implausible_volumes
from KDSegmentationLib.weights.resolution import is_available_offline


def test_every_bundled_model_is_verified_offline_and_documented():
    registry = load_registry()
    assert registry.models, "the quick start needs a bundled trained model"
    for card in registry.models.values():
        assert is_available_offline(card, registry.directory), f"{card.id}: bundled file missing or checksum wrong"
        assert "not for clinical use" in card.intended_use
        summary = card.metrics.get("evaluation", {}).get("summary", {})
        assert summary.get("transunet", {}).get("organs"), f"{card.id}: the card must carry measured validation metrics"
        assert card.training.get("steps"), f"{card.id}: the card must say how long the weights were trained"


def test_quick_start_command_segments_the_sample_with_the_shipped_model(tmp_path, capsys, shared_data):
    out, volumes = tmp_path / "sample_seg.nii.gz", tmp_path / "volumes.json"
    assert main(["segment", "--sample", "-o", str(out), "--device", "cpu", "--volumes-json", str(volumes)]) == 0
    seg = sitk.ReadImage(str(out))
    ct = sitk.ReadImage(str(sample_ct_path()))
    assert (seg.GetSize(), seg.GetSpacing(), seg.GetOrigin(), seg.GetDirection()) == \
        (ct.GetSize(), ct.GetSpacing(), ct.GetOrigin(), ct.GetDirection())
    # The sample is a training patient: the demo model must find its liver where the reference has it.
    reference = sitk.GetArrayFromImage(sitk.ReadImage(
        str(shared_data / "ct" / "totalsegmentator_example" / "example_seg_fast_force_split.nii.gz"))) == 5
    liver = sitk.GetArrayFromImage(seg) == 5
    dice = 2 * (liver & reference).sum() / (liver.sum() + reference.sum())
    assert dice > 0.5
    # What the in-Slicer self-test checks: plausible volumes for every structure the card validates.
    card = load_registry().get()
    assert "liver" in card.validated_structures()
    assert implausible_volumes(json.loads(volumes.read_text(encoding="utf-8"))["volumes_ml"],
                               card.validated_structures()) == []


def test_validated_structures_follow_the_card_metrics():
    card = load_registry().get()
    organs = card.metrics["evaluation"]["summary"]["transunet"]["organs"]
    assert card.validated_structures() == [name for name in organs if organs[name]["dice"]["mean"] >= 0.5]
    assert card.validated_structures(min_dice=1.01) == []
    assert replace(card, metrics={}).validated_structures() == []
