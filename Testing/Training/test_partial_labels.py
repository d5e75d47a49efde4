"""Partial-label targets and losses (marginal + exclusion, Shi et al. 2021; label-constrained KD) on real labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdseg_train.data import load_ct_volume
from kdseg_train.data.label_maps import IGNORE_INDEX
from kdseg_train.data.partial_targets import (MERGED_BASE, allowed_classes, encode_partial_labels, hard_labels,
                                              unlabeled_organs)
from kdseg_train.losses import PixelKLDivergence, SegmentationLoss
from kdseg_train.losses.partial_label import PartialLabelLoss, exclusion_terms
from kdseg_train.losses.partial_pixel_kd import PartialLabelPixelKD

LIVER, SPLEEN = 5, 7


@pytest.fixture(scope="module")
def labels(shared_data):
    """(4, H, W) real Synapse labels: liver-bearing slices of the TotalSegmentator example (every organ labelled)."""
    ts = shared_data / "ct" / "totalsegmentator_example"
    volume = load_ct_volume(ts / "example_ct.nii.gz", ts / "example_seg_fast_force_split.nii.gz", "totalsegmentator")
    z = np.nonzero(((volume.labels == LIVER).sum(axis=(1, 2)) > 200) & ((volume.labels == SPLEEN).any(axis=(1, 2))))[0]
    picked = volume.labels[z[:: max(1, len(z) // 4)][:4]]
    assert {LIVER, SPLEEN} <= set(np.unique(picked).tolist())
    return picked


def liver_only(labels: np.ndarray) -> torch.Tensor:
    """The same slices as a liver-only dataset would label them, encoded as partial targets."""
    return torch.from_numpy(encode_partial_labels(np.where(labels == LIVER, LIVER, 0), (LIVER,), 9))


def random_probs(shape, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(shape[0], 9, *shape[1:], generator=generator) * 2, dim=1)


def move(probs: torch.Tensor, where: torch.Tensor, source: int, target: int, fraction: float) -> torch.Tensor:
    """Move ``fraction`` of class ``source``'s probability to class ``target`` at voxels ``where``."""
    out = probs.clone()
    amount = out[:, source] * fraction * where
    out[:, source] -= amount
    out[:, target] += amount
    return out


def test_encoding_keeps_labelled_organs_and_marks_the_rest_as_merged(labels):
    target = liver_only(labels)
    merged_code = MERGED_BASE + sum(1 << u for u in (1, 2, 3, 4, 6, 7, 8))
    assert set(torch.unique(target).tolist()) == {LIVER, merged_code}
    allowed = allowed_classes(target, 9)
    per_voxel = allowed.movedim(1, -1)  # (B, H, W, C)
    at_liver = per_voxel[target == LIVER]
    assert at_liver[:, LIVER].all() and at_liver.sum(1).eq(1).all()
    merged = per_voxel[target != LIVER]
    assert merged[:, [0, 1, 2, 3, 4, 6, 7, 8]].all() and not merged[:, LIVER].any()
    assert (hard_labels(target)[target != LIVER] == IGNORE_INDEX).all()
    full = torch.from_numpy(encode_partial_labels(labels, range(1, 9), 9))
    assert torch.equal(full, torch.from_numpy(labels.astype(np.int64)))
    with pytest.raises(ValueError, match=r"organ\(s\) \[1, 2, 3, 4, 6, 7, 8\], which the case declares unlabelled"):
        encode_partial_labels(labels, (LIVER,), 9)
    assert unlabeled_organs((3, 4), 9) == (1, 2, 5, 6, 7, 8)


def test_equals_transunet_loss_on_fully_labelled_data(labels):
    target = torch.from_numpy(labels.astype(np.int64))
    target[:, :5] = IGNORE_INDEX  # some unknown voxels as well
    logits = torch.log(random_probs(target.shape))
    expected = SegmentationLoss(9)(logits, target)
    assert PartialLabelLoss(9, exclusion_weight=0.0)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_moving_probability_between_background_and_an_unlabelled_organ_changes_nothing(labels):
    target = liver_only(labels)
    probs = random_probs(target.shape, seed=1)
    moved = move(probs, (target != LIVER).float(), 0, SPLEEN, 0.8)
    loss = PartialLabelLoss(9, exclusion_weight=1.0)
    before, after = loss(torch.log(probs), target), loss(torch.log(moved), target)
    assert after.item() == pytest.approx(before.item(), rel=1e-5)
    # Not vacuous: with spleen labelled (full labels) the same move is a different loss.
    full = torch.from_numpy(labels.astype(np.int64))
    assert abs(loss(torch.log(moved), full).item() - loss(torch.log(probs), full).item()) > 1e-3


def test_exclusion_penalises_a_labelled_absent_organ(labels):
    target = liver_only(labels)
    probs = random_probs(target.shape, seed=2)
    outside = (target != LIVER).float()
    allowed = allowed_classes(target, 9)
    base = exclusion_terms(torch.log(probs), allowed)
    to_liver = exclusion_terms(torch.log(move(probs, outside, 0, LIVER, 0.8)), allowed)
    to_spleen = exclusion_terms(torch.log(move(probs, outside, 0, SPLEEN, 0.8)), allowed)
    assert to_liver["ce"] > base["ce"] + 0.05 and to_liver["dice"] > base["dice"] + 0.01  # dice: mean of 8 organs
    assert to_spleen["ce"].item() == pytest.approx(base["ce"].item(), rel=1e-5)
    assert to_spleen["dice"].item() == pytest.approx(base["dice"].item(), rel=1e-5)
    # A prediction that never shows the liver outside it has no exclusion penalty.
    exact = torch.nn.functional.one_hot(torch.where(target == LIVER, LIVER, 0), 9).movedim(-1, 1).float()
    clean = exclusion_terms(torch.log(exact.clamp_min(1e-12)), allowed)
    assert clean["ce"] < 1e-6 and clean["dice"] < 1e-4


def test_label_constrained_kd_takes_unlabelled_organs_from_the_teacher(labels):
    target = liver_only(labels)
    student = torch.randn(target.shape[0], 9, *target.shape[1:], generator=torch.Generator().manual_seed(3))
    teacher = torch.randn(student.shape, generator=torch.Generator().manual_seed(4)) * 3
    kd = PartialLabelPixelKD(4.0)
    full = torch.from_numpy(labels.astype(np.int64))
    assert kd(student, teacher, full).item() == pytest.approx(PixelKLDivergence(4.0)(student, teacher).item(),
                                                              rel=1e-6)
    # The labels veto the teacher's liver outside the liver: its liver logit there does not matter...
    vetoed = teacher.clone()
    vetoed[:, LIVER][target != LIVER] += 5.0
    assert kd(student, vetoed, target).item() == pytest.approx(kd(student, teacher, target).item(), rel=1e-6)
    # ...but its spleen (an unlabelled organ) does: the teacher supplies it.
    spleen = teacher.clone()
    spleen[:, SPLEEN][target != LIVER] += 5.0
    assert abs(kd(student, spleen, target).item() - kd(student, teacher, target).item()) > 1e-2


def test_datalist_entries_expand_to_cases_with_their_labelled_organs(shared_data, tmp_path):
    from kdseg_train.data.datalist_entries import expand_entries, parse_labeled

    ts = shared_data / "ct" / "totalsegmentator_example"
    (tmp_path / "datalist.json").write_text(json.dumps({
        "layout": "msd", "licence": "CC BY-SA 4.0",
        "training": [{"name": "liver_3", "image": str(ts / "example_ct_sm.nii.gz"), "label": "labels/liver_3.nii.gz",
                      "labeled": ["liver"]}]}))
    entry = {"datalist": str(tmp_path / "datalist.json"), "split": "training", "slices": [0.0, 0.5]}
    other = {"image": "a.nii.gz", "label": "b.nii.gz"}
    assert expand_entries([entry, other]) == [
        {"name": "liver_3", "image": str(ts / "example_ct_sm.nii.gz"),
         "label": str(tmp_path / "labels" / "liver_3.nii.gz"), "remap": "identity", "labeled": ["liver"], "slices": [0.0, 0.5]}, other]
    with pytest.raises(ValueError, match=r"has no 'validation' cases \(it has: training\)"):
        expand_entries([dict(entry, split="validation")])
    assert parse_labeled(["liver", "spleen"]) == (5, 7) and parse_labeled([3, "4"]) == (3, 4)
    assert parse_labeled(None) is None
    with pytest.raises(ValueError, match="unknown organ 'livr'"):
        parse_labeled(["livr"])


def test_slice_dataset_trains_a_liver_only_case_on_merged_background(labels):
    from kdseg_train.data import AxialSliceDataset, CTVolume

    liver = np.where(labels == LIVER, LIVER, 0).astype(np.uint8)
    volume = CTVolume("liver_only", np.zeros(labels.shape, np.float32), liver, (3.0, 3.0, 3.0), labeled=(LIVER,))
    full = CTVolume("full", np.zeros(labels.shape, np.float32), labels, (3.0, 3.0, 3.0))
    dataset = AxialSliceDataset([volume, full], img_size=64, augment=False)
    _, partial_label = dataset[0]
    _, full_label = dataset[len(labels)]
    assert set(torch.unique(partial_label).tolist()) <= {LIVER, MERGED_BASE + 0b111011110}
    assert (partial_label >= MERGED_BASE).any() and (partial_label == LIVER).any()
    assert int(full_label.max()) <= 8 and volume.slice_range(0.0, 0.5).labeled == (LIVER,)


def _mixed_config(tmp_path, shared_data, **extra):
    ts = shared_data / "ct" / "totalsegmentator_example"
    dcmqi = shared_data / "ct" / "dcmqi_3slice"
    cfg = {
        "model": {"name": "student-shsa-tiny", "num_classes": 9, "img_size": 32},
        "data": {"train": [{"name": "full", "image": str(ts / "example_ct_sm.nii.gz"),
                            "label": str(ts / "example_seg.nii.gz"), "remap": "totalsegmentator"},
                           {"name": "liver_only", "image": str(dcmqi / "ct-3slice"),
                            "label": str(dcmqi / "liver_spine_seg.nrrd"), "remap": "dcmqi", "labeled": ["liver"]}],
                 "val": [{"name": "liver_only_val", "image": str(dcmqi / "ct-3slice"),
                          "label": str(dcmqi / "liver_spine_seg.nrrd"), "remap": "dcmqi", "labeled": ["liver"]}],
                 "batch_size": 4},
        "train": {"max_steps": 2, "checkpoint_every": 2, "val_every": 2, "threads": 1, "figures": False,
                  "tensorboard": False},
        "output": str(tmp_path / "run")}
    for key, value in extra.items():
        cfg[key] = value
    return cfg


def test_mixed_liver_only_and_fully_labelled_run_trains(tmp_path, shared_data):
    from kdseg_train.config import DEFAULTS, apply_overrides
    from kdseg_train.losses.partial_label import PartialLabelLoss
    from kdseg_train.trainer import Trainer

    import copy

    def config(**extra):
        cfg = copy.deepcopy(DEFAULTS)
        for section, values in _mixed_config(tmp_path, shared_data, **extra).items():
            cfg[section] = {**cfg[section], **values} if isinstance(values, dict) else values
        return apply_overrides(cfg, [])

    trainer = Trainer(config())
    assert isinstance(trainer.objective.seg_loss, PartialLabelLoss)
    labels = torch.stack([trainer.dataset[i][1] for i in range(len(trainer.dataset))])
    assert (labels >= MERGED_BASE).any() and (labels == LIVER).any() and (labels == SPLEEN).any()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    log = (tmp_path / "run" / "train_log.csv").read_text(encoding="utf-8").splitlines()
    assert len(log) == 3 and all(np.isfinite(float(v)) for v in log[-1].split(",")[3:5])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["validation"]["cases"]["liver_only_val"]) == ["liver"]  # scored on what it labels

    # Distillation on the same mixed data: the teacher fills in the liver-only case's other organs.
    student = config(output=str(tmp_path / "student"), model={"name": "student-shsa-tiny", "img_size": 32},
                     distill={"teacher": str(tmp_path / "run"), "partial_pixel_kd": {"weight": 0.5},
                              "region_affinity_kd": {"weight": 0.5}})
    distiller = Trainer(student, distill=True)
    distiller.run()
    header, last = (tmp_path / "student" / "train_log.csv").read_text(encoding="utf-8").splitlines()[::2]
    assert "partial_pixel_kd" in header and "region_affinity_kd" in header
    assert all(np.isfinite(float(v)) for v in last.split(",")[3:-1])


def test_labeled_and_unlabeled_together_are_refused(tmp_path, shared_data):
    from kdseg_train.run_data import load_cases

    entry = _mixed_config(tmp_path, shared_data)["data"]["val"][0]
    with pytest.raises(ValueError, match="give labeled: .* or unlabeled: .*, not both"):
        load_cases([dict(entry, unlabeled=[1, 2])], (-125, 275), 9, 32)
