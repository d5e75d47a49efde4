"""Teacher and student networks: exact sizes, shapes, SHSA math, gradients, taps, validation."""

import math

import pytest
import torch

from kdseg_train.models import create_model, get_config, list_models
from kdseg_train.models.attention import SingleHeadSelfAttention
from kdseg_train.models.cost import count_macs, count_parameters


def test_teacher_is_exactly_transunet_r50_vit_b16():
    teacher = create_model("teacher-r50-b16", num_classes=9)
    assert count_parameters(teacher) == 105_277_081
    cfg = teacher.config
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.cnn_units) == (768, 12, 12, (3, 4, 9))
    assert teacher.embeddings.position_embeddings.shape == (1, 196, 768)


def test_default_student_is_under_a_tenth_of_teacher_params_and_macs():
    teacher = create_model("teacher-r50-b16")
    student = create_model("student-shsa")
    assert count_parameters(student) * 10 <= count_parameters(teacher)
    teacher_macs, student_macs = count_macs(teacher, 224), count_macs(student, 224)
    assert 29.0e9 < teacher_macs < 29.5e9  # 58.45 GFLOP / 2, the reference sheet's figure
    assert student_macs * 10 <= teacher_macs
    assert set(list_models()) >= {"teacher-r50-b16", "student-shsa", "student-mhsa"}
    assert get_config("student-mhsa").attention == "mhsa"
    assert get_config("student-shsa").hidden_size == get_config("student-mhsa").hidden_size


@pytest.mark.parametrize("name", ["student-shsa", "student-mhsa", "student-shsa-tiny"])
@pytest.mark.parametrize("size, classes", [((32, 32), 2), ((64, 96), 9), ((128, 64), 5)])
def test_output_shapes(name, size, classes):
    model = create_model(name, num_classes=classes, img_size=64).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, *size))
    assert out.shape == (2, classes, *size)


def test_rgb_input_for_video_frames():
    model = create_model("student-shsa-tiny", num_classes=2, img_size=64, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("shape, match", [((1, 1, 100, 64), "multiples of 16"), ((1, 2, 64, 64), "1 input channel"),
                                          ((1, 64, 64), "shape")])
def test_invalid_inputs_raise_value_error(shape, match):
    model = create_model("student-shsa-tiny", img_size=64)
    with pytest.raises(ValueError, match=match):
        model(torch.rand(*shape))
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("student-shsa-tiny", img_size=100)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet")


def test_shsa_matches_single_head_attention_computed_by_hand():
    torch.manual_seed(0)
    dim, pdim, qk = 12, 4, 2
    layer = SingleHeadSelfAttention(dim, pdim, qk).eval()
    x = torch.randn(1, 5, dim)
    part, rest = x[0, :, :pdim], x[0, :, pdim:]
    normed = (part - part.mean()) / torch.sqrt(part.var(unbiased=False) + 1e-5)
    normed = normed * layer.norm.weight + layer.norm.bias
    qkv = normed @ layer.qkv.weight.T + layer.qkv.bias
    q, k, v = qkv[:, :qk], qkv[:, qk:2 * qk], qkv[:, 2 * qk:]
    scores = torch.zeros(5, 5)
    for i in range(5):
        for j in range(5):
            scores[i, j] = (q[i] * k[j]).sum() / math.sqrt(qk)
    attn = torch.exp(scores) / torch.exp(scores).sum(1, keepdim=True)
    expected = torch.relu(torch.cat([attn @ v, rest], 1)) @ layer.proj.weight.T + layer.proj.bias
    out, probs = layer(x, need_weights=True)
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs[0, 0], attn, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["student-shsa-tiny", "student-mhsa"])
def test_every_parameter_receives_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, img_size=32, depth=1, dropout=0.0)
    model(torch.rand(2, 1, 32, 32)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_feature_taps_shapes_and_zero_cost_default():
    model = create_model("student-shsa", img_size=64).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 96), return_features=True)
        plain = model(torch.rand(2, 1, 64, 96))
    assert isinstance(plain, torch.Tensor)
    n = 4 * 6
    assert out.grid == (4, 6)
    assert len(out.tokens) == 4 and out.tokens[0].shape == (2, n, 256)
    assert out.attentions[0].shape == (2, 1, n, n)
    torch.testing.assert_close(out.attention_mean[0].sum(-1), torch.ones(2, n))
    assert [s.shape[1] for s in out.skips] == [256, 128, 32]
    assert [d.shape[-1] for d in out.decoder_features] == [12, 24, 48, 96]
    teacher_out = create_model("teacher-r50-b16", img_size=64).eval()(torch.rand(1, 1, 64, 64), return_features=True)
    assert teacher_out.attentions[0].shape == (1, 12, 16, 16) and len(teacher_out.tokens) == 12


def test_seeded_construction_and_forward_are_deterministic():
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = create_model("student-shsa-tiny", img_size=32)
        model.train()
        torch.manual_seed(8)
        outs.append(model(torch.ones(1, 1, 32, 32)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
