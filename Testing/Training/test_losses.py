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
