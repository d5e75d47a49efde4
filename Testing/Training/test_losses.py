"""Loss math on tiny hand-computed inputs; zero when student equals teacher; gradients flow."""

import math

import torch

from kdseg_train.data.label_maps import IGNORE_INDEX
from kdseg_train.losses import AttentionMapDistillation, PixelKLDivergence, SegmentationLoss, layer_mapping


def test_pixel_kd_is_zero_for_equal_logits_and_matches_hand_value():
    z = torch.randn(2, 3, 4, 4)
    assert PixelKLDivergence(4.0)(z, z).abs() < 1e-6
    s = torch.tensor([0.0, 0.0]).view(1, 2, 1, 1)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)  # teacher probs (0.75, 0.25) at T = 1
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert abs(PixelKLDivergence(1.0)(s, t).item() - expected) < 1e-6
    s.requires_grad_(True)
    loss = PixelKLDivergence(2.0)(s, t)
    loss.backward()
    assert loss > 0 and s.grad.abs().sum() > 0


def test_attention_kd_zero_when_equal_positive_otherwise_and_resizes_grids():
    attn = torch.softmax(torch.randn(1, 16, 16), -1)
    kd = AttentionMapDistillation(2, 4)
    assert kd.pairs == [(0, 1), (1, 3)] == layer_mapping(2, 4)
    assert kd([attn, attn], [attn] * 4, (4, 4), (4, 4)).abs() < 1e-6
    student = torch.softmax(torch.randn(1, 16, 16, requires_grad=True), -1)
    teacher = [torch.softmax(torch.randn(1, 64, 64), -1)] * 4
    loss = kd([student, student], teacher, (4, 4), (8, 8))
    assert loss > 0 and loss.requires_grad


def test_segmentation_loss_ignores_unlabelled_voxels_and_matches_definition():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 0] = 10.0
    target = torch.tensor([[[1, IGNORE_INDEX]]])
    loss = SegmentationLoss(2)(logits, target)
    p1 = torch.softmax(torch.tensor([0.0, 10.0]), 0)
    ce = -math.log(p1[1])
    # Dice over both classes (only the valid voxel): class 0: 2*0 / (p0 + 0), class 1: 2*p1 / (p1 + 1)
    smooth = 1e-5
    d0 = 1 - (0 + smooth) / (p1[0].item() + smooth)
    d1 = 1 - (2 * p1[1].item() + smooth) / (p1[1].item() + 1 + smooth)
    expected = 0.5 * ce + 0.5 * (d0 + d1) / 2
    assert abs(loss.item() - expected) < 1e-4
    changed = logits.clone()
    changed[0, :, 0, 1] = torch.tensor([5.0, -5.0])  # the ignored voxel must not matter
    assert abs(SegmentationLoss(2)(changed, target).item() - loss.item()) < 1e-6


def test_channel_wise_distillation_zero_when_equal_and_hand_value():
    from kdseg_train.losses import ChannelWiseDistillation

    z = torch.randn(2, 3, 4, 4)
    assert ChannelWiseDistillation(1.0)(z, z).abs() < 1e-6
    s = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([[[[math.log(3.0), 0.0]]]])  # teacher spatial distribution (0.75, 0.25)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert abs(ChannelWiseDistillation(1.0)(s, t).item() - expected) < 1e-6


def test_pairwise_affinity_distillation():
    from kdseg_train.losses import PairwiseAffinityDistillation, pairwise_affinity

    f = torch.randn(2, 8, 16, 16)
    kd = PairwiseAffinityDistillation((4, 4))
    assert kd(f, f).abs() < 1e-10
    wider = torch.cat([f, f], dim=1)  # same directions with more channels: identical affinities
    assert kd(f, wider).abs() < 1e-10
    a = pairwise_affinity(torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]]), (1, 2))
    torch.testing.assert_close(a, torch.eye(2)[None])
    student = torch.randn(2, 4, 16, 16, requires_grad=True)
    loss = kd(student, f)
    loss.backward()
    assert loss > 0 and student.grad.abs().sum() > 0


def test_emkd_importance_and_region_affinity():
    from kdseg_train.losses import ImportanceMapDistillation, RegionAffinityDistillation, importance_map

    f = torch.randn(2, 4, 8, 8)
    assert ImportanceMapDistillation()(f, f).abs() < 1e-10
    imp = importance_map(torch.tensor([[[[1.0, 2.0]]]]), p=2)
    torch.testing.assert_close(imp, torch.tensor([[1.0, 4.0]]) / math.sqrt(17.0))
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :4] = 5
    labels[:, 6:, 6:] = 7
    labels[0, 0, 0] = IGNORE_INDEX
    rad = RegionAffinityDistillation(9)
    assert rad(f, f, labels).abs() < 1e-10
    student = torch.randn(2, 6, 8, 8, requires_grad=True)
    loss = rad(student, f, labels)
    loss.backward()
    assert loss > 0 and student.grad.abs().sum() > 0


def test_token_and_ranking_distillation():
    from kdseg_train.losses import TokenRankingDistillation, TokenSequenceDistillation, token_importance

    kd = TokenSequenceDistillation(4, 4, 2, 4)
    with torch.no_grad():
        for projection in kd.projections:
            projection.weight.copy_(torch.eye(4))
            projection.bias.zero_()
    tokens = [torch.randn(1, 16, 4) for _ in range(4)]
    assert kd([tokens[1], tokens[3]], tokens, (4, 4), (4, 4)).abs() < 1e-10
    assert kd([tokens[0], tokens[0]], tokens, (4, 4), (4, 4)) > 0
    assert len(list(kd.parameters())) == 4  # learned projections train with the student
    attn = torch.softmax(torch.randn(2, 16, 16), -1)
    torch.testing.assert_close(token_importance(attn).sum(1), torch.ones(2))
    rank = TokenRankingDistillation(top_k=5)
    assert rank(attn, attn, (4, 4), (4, 4)).abs() < 1e-6
    other = torch.softmax(torch.randn(2, 16, 16, requires_grad=True), -1)
    assert rank(other, attn, (4, 4), (4, 4)) > 0


def test_distillation_criterion_combines_configured_terms_on_real_networks():
    import pytest

    from kdseg_train.losses import DISTILLATION_TERMS, DistillationCriterion
    from kdseg_train.models import create_model

    torch.manual_seed(0)
    student = create_model("student-shsa-tiny", img_size=32)
    teacher = create_model("student-mhsa", img_size=32, depth=3).eval()
    config = {name: {"weight": 0.5} for name in DISTILLATION_TERMS}
    criterion = DistillationCriterion(config, student, teacher, 9)
    x = torch.rand(2, 1, 32, 32)
    labels = torch.randint(0, 9, (2, 32, 32))
    with torch.no_grad():
        t_out = teacher(x, return_features=True)
    total, values = criterion(student(x, return_features=True), t_out, labels)
    assert set(values) == set(DISTILLATION_TERMS)
    assert all(torch.isfinite(v) and v >= 0 for v in values.values())
    total.backward()
    assert all(p.grad is not None for p in criterion.parameters())
    with pytest.raises(ValueError, match="unknown distillation term"):
        DistillationCriterion({"magic_kd": {"weight": 1}}, student, teacher, 9)
