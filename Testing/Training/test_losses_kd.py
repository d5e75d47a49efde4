"""SCCF, contourlet (CDM), CWD adapters, layer mappings, the criterion registry and the segmentation loss edges."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kdseg_train.data.label_maps import IGNORE_INDEX
from kdseg_train.losses import (DISTILLATION_TERMS, ChannelWiseDistillation, ContourletDecomposition,
                                ContourletDistillation, ContourletTextureBranch, DirectionalFilterBank, FeatureDims,
                                ImportanceMapDistillation, LaplacianPyramid, SegmentationLoss,
                                SpaceChannelCascadeDistillation, TokenSequenceDistillation, build_distillation,
                                layer_mapping, spatial_attention)


# ---------------------------------------------------------------- SCCF

def test_sccf_hand_computed_single_stage():
    student = torch.tensor([[[[1.0, 0.0]]]])  # energy (1, 0) -> scaled (2, 0)
    teacher = torch.tensor([[[[0.0, 1.0]]]])
    p = math.exp(2) / (math.exp(2) + 1)
    q = 1 - p
    torch.testing.assert_close(spatial_attention(student).flatten(), torch.tensor([p, q]))
    kd = SpaceChannelCascadeDistillation([1], [1], tau=1.0)
    # KL((q, p) || (p, q)) = (p - q) * log(p / q) = 2 (p - q); one channel -> channel part 0.
    assert abs(kd([student], [teacher]).item() - 2 * (p - q)) < 1e-6


def test_sccf_zero_when_equal_positive_and_trains_adapters():
    torch.manual_seed(0)
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 4, 8, 8)]
    kd = SpaceChannelCascadeDistillation([8, 4], [8, 4])
    assert kd(feats, feats).abs() < 1e-6  # identity-initialised adapters
    wide = SpaceChannelCascadeDistillation([3, 2], [8, 4])
    student = [torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 2, 8, 8, requires_grad=True)]
    loss = wide(student, feats)
    loss.backward()
    assert loss > 0 and student[1].grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in wide.parameters())
    # The cascade: stage 2's fused attention depends on stage 1's features.
    changed = [feats[0] * torch.linspace(0.1, 2, 16).view(1, 1, 4, 4), feats[1]]
    fused_a = kd._cascade(feats, [f.shape[-2:] for f in feats])[1]
    fused_b = kd._cascade(changed, [f.shape[-2:] for f in feats])[1]
    assert not torch.allclose(fused_a, fused_b)
    with pytest.raises(ValueError, match="stages"):
        SpaceChannelCascadeDistillation([8], [8, 4])


# ---------------------------------------------------------------- contourlet

@pytest.mark.parametrize("size", [(32, 32), (28, 28), (15, 21)])
def test_contourlet_reconstructs_exactly(size):
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size)
    cdm = ContourletDecomposition(levels=2, directions=[8, 4])
    coefficients = cdm(x)
    assert [tuple(s.shape[2:3]) for s in coefficients.subbands] == [(8,), (4,)]
    torch.testing.assert_close(cdm.reconstruct(coefficients), x, atol=1e-5, rtol=0)


def test_directional_filter_bank_is_a_tight_frame_and_selects_orientation():
    bank = DirectionalFilterBank(8)
    masks = bank.masks((16, 20), torch.device("cpu"))
    torch.testing.assert_close(masks.pow(2).sum(0), torch.ones(16, 20))
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    along_x = torch.cos(2 * math.pi * 0.25 * xx)[None, None]  # frequency on the x axis: orientation 0
    along_y = torch.cos(2 * math.pi * 0.25 * yy)[None, None]  # orientation pi/2
    e_x = bank(along_x).pow(2).sum(dim=(-1, -2))[0, 0]
    e_y = bank(along_y).pow(2).sum(dim=(-1, -2))[0, 0]
    # Wedge centres are at (d + 0.5) pi / 8: orientation 0 lies between wedges 7 and 0, pi/2 between 3 and 4.
    torch.testing.assert_close(e_x[[0, 7]].sum() / e_x.sum(), torch.tensor(1.0))
    torch.testing.assert_close(e_y[[3, 4]].sum() / e_y.sum(), torch.tensor(1.0))
    # Energy is preserved (tight frame): sum over sub-bands equals the input energy.
    torch.testing.assert_close(e_x.sum(), along_x.pow(2).sum(), rtol=1e-4, atol=1e-3)


def test_laplacian_pyramid_constant_has_no_bandpass():
    bands, low = LaplacianPyramid(2)(torch.full((1, 2, 13, 17), 3.0))
    assert all(b.abs().max() < 1e-5 for b in bands)
    assert low.shape[-2:] == (4, 5) and torch.allclose(low, torch.full_like(low, 3.0))


def test_contourlet_loss_and_texture_branch():
    torch.manual_seed(2)
    teacher = torch.randn(2, 6, 16, 16)
    kd = ContourletDistillation(levels=2, directions=4)
    assert kd(teacher, teacher).abs() < 1e-10
    assert kd(torch.cat([teacher, teacher], 1), teacher).abs() < 1e-10  # channel count does not matter
    student = torch.randn(2, 3, 8, 8, requires_grad=True)  # other width and resolution
    loss = kd(student, teacher)
    loss.backward()
    assert 0 < loss < 4 and student.grad.abs().sum() > 0
    branch = ContourletTextureBranch(16, levels=2, directions=4)
    x = torch.randn(2, 16, 14, 14)
    torch.testing.assert_close(branch(x), x)  # zero-initialised norm: attaching changes nothing at first
    with torch.no_grad():
        branch.fuse[1].weight.fill_(1.0)
    out = branch(x)
    out.sum().backward()
    assert out.shape == x.shape and not torch.allclose(out, x) and branch.squeeze.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- CWD, token KD, EMKD p

def test_cwd_adapter_for_different_widths_trains():
    teacher = torch.randn(2, 8, 4, 4)
    kd = ChannelWiseDistillation(tau=2.0, student_channels=3, teacher_channels=8)
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = kd(student, teacher)
    loss.backward()
    assert loss > 0 and kd.adapter.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="adapter"):
        ChannelWiseDistillation()(student, teacher)


def test_token_kd_identity_start_and_explicit_layer_pairs():
    tokens = [torch.randn(1, 16, 8) for _ in range(12)]
    kd = TokenSequenceDistillation(8, 8, 4, 12)
    assert kd.pairs == [(0, 2), (1, 5), (2, 8), (3, 11)]
    assert kd([tokens[2], tokens[5], tokens[8], tokens[11]], tokens, (4, 4), (4, 4)).abs() < 1e-10
    explicit = TokenSequenceDistillation(8, 16, 2, 12, pairs=[[0, 0], [1, 11]])
    assert explicit.pairs == [(0, 0), (1, 11)] and explicit.projections[0].weight.shape == (16, 8)
    with pytest.raises(ValueError, match="outside"):
        layer_mapping(2, 12, [[2, 0]])


def test_emkd_importance_p4_hand_value():
    s = torch.tensor([[[[1.0, 2.0]]]])  # A = (1, 16) / sqrt(257)
    t = torch.tensor([[[[1.0, 1.0]]]])  # A = (1, 1) / sqrt(2)
    a_s = torch.tensor([1.0, 16.0]) / math.sqrt(257)
    a_t = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    assert abs(ImportanceMapDistillation()(s, t).item() - ((a_s - a_t) ** 2).sum().item()) < 1e-6


# ---------------------------------------------------------------- criterion

@pytest.fixture(scope="module")
def tiny_pair():
    from kdseg_train.models import create_model

    torch.manual_seed(0)
    student = create_model("student-shsa-tiny", num_classes=9, img_size=32)
    teacher = create_model("student-mhsa", num_classes=9, img_size=32, depth=3).eval()
    return student, teacher


def _all_terms():
    config = {name: {"weight": 0.5} for name in DISTILLATION_TERMS}
    config["channel_kd"] = {"weight": 1.0, "feature": "decoder:1", "tau": 4.0}
    config["teacher"] = "runs/teacher"
    return config


def test_criterion_is_zero_when_the_student_is_the_teacher(tiny_pair):
    student, _ = tiny_pair
    twin = copy.deepcopy(student).eval()
    student.eval()
    dims = FeatureDims.from_model(student, 9)
    criterion = build_distillation(_all_terms(), dims, dims)
    x = torch.rand(2, 1, 32, 32)
    labels = torch.randint(0, 9, (2, 32, 32))
    labels[0, :4] = IGNORE_INDEX
    with torch.no_grad():
        total, values = criterion(student(x, return_features=True), twin(x, return_features=True), labels)
    assert set(values) == set(DISTILLATION_TERMS)
    assert all(abs(v.item()) < 1e-5 for v in values.values()), {k: v.item() for k, v in values.items()}
    student.train()


def test_criterion_trains_student_and_projections_across_widths(tiny_pair):
    student, teacher = tiny_pair
    criterion = build_distillation(_all_terms(), FeatureDims.from_model(student, 9), FeatureDims.from_model(teacher, 9))
    params = list(criterion.parameters())
    assert params  # token projections, CWD and SCCF adapters
    x = torch.rand(2, 1, 32, 32)
    labels = torch.randint(0, 9, (2, 32, 32))
    with torch.no_grad():
        t_out = teacher(x, return_features=True)
    total, values = criterion(student(x, return_features=True), t_out, labels)
    assert all(torch.isfinite(v) and v > 0 for v in values.values())
    student.zero_grad()
    total.backward()
    assert all(p.grad is not None for p in params)
    assert student.segmentation_head.weight.grad.abs().sum() > 0


def test_criterion_config_errors_and_logits_only(tiny_pair):
    student, teacher = tiny_pair
    s_dims, t_dims = FeatureDims.from_model(student, 9), FeatureDims.from_model(teacher, 9)
    with pytest.raises(ValueError, match="unknown option"):
        build_distillation({"pixel_kd": {"weight": 1, "temprature": 2}}, s_dims, t_dims)
    with pytest.raises(ValueError, match="no distillation term"):
        build_distillation({"pixel_kd": {"weight": 0}}, s_dims, t_dims)
    with pytest.raises(ValueError, match="unknown feature"):
        build_distillation({"channel_kd": {"weight": 1, "feature": "decoder"}}, s_dims, t_dims)
    logits_only = build_distillation({"pixel_kd": {"weight": 2.0, "temperature": 1.0}}, s_dims, t_dims)
    assert not logits_only.needs_features
    s = torch.zeros(1, 9, 2, 2)
    total, values = logits_only(s, s.clone())
    assert total.abs() < 1e-7 and list(values) == ["pixel_kd"]


# ---------------------------------------------------------------- segmentation loss edges

def test_segmentation_loss_all_ignored_and_bad_labels():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE_INDEX)
    loss = SegmentationLoss(3)(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="label value 7"):
        SegmentationLoss(3)(logits, torch.full((2, 4, 4), 7))
    with pytest.raises(ValueError, match="does not match"):
        SegmentationLoss(3)(logits, torch.zeros(2, 5, 4, dtype=torch.long))


def test_segmentation_loss_near_zero_for_confident_correct_prediction_on_real_labels(shared_data):
    from kdseg_train.data import load_ct_volume

    ts = shared_data / "ct" / "totalsegmentator_example"
    volume = load_ct_volume(ts / "example_ct_sm.nii.gz", ts / "example_seg.nii.gz", "totalsegmentator")
    target = torch.from_numpy(volume.labels[10:12].astype("int64"))
    perfect = torch.nn.functional.one_hot(target, 9).permute(0, 3, 1, 2).float() * 30.0
    loss_fn = SegmentationLoss(9)
    assert loss_fn(perfect, target) < 1e-3
    wrong = perfect.roll(1, dims=1)
    assert loss_fn(wrong, target) > 0.9
