"""Teacher and student networks: exact sizes, shapes, SHSA math, gradients, taps, validation."""

import math

import pytest
import torch

from torch.utils.flop_counter import FlopCounterMode

from kdseg_train.models import TransUNetOutput, create_model, get_config, list_models
from kdseg_train.models.attention import MultiHeadSelfAttention, SingleHeadSelfAttention
from kdseg_train.models.cost import count_macs, count_parameters
from kdseg_train.models.resnet_v2 import StdConv2d


@pytest.fixture(scope="module")
def teacher():
    """The 105 M-parameter teacher, built once for this module (construction costs seconds)."""
    torch.manual_seed(0)
    return create_model("teacher-r50-b16", num_classes=9, img_size=224).eval()


def test_teacher_is_exactly_transunet_r50_vit_b16(teacher):
    assert count_parameters(teacher) == 105_277_081
    cfg = teacher.config
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.cnn_units) == (768, 12, 12, (3, 4, 9))
    assert teacher.embeddings.position_embeddings.shape == (1, 196, 768)


def test_teacher_layers_and_feature_sizes_at_224(teacher):
    norms = [m for m in teacher.encoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert {m.num_groups for n, m in teacher.encoder.named_modules()
            if isinstance(m, torch.nn.GroupNorm) and "gn_proj" not in n} == {32}
    assert len(norms) == 1 + 3 * 16 + 3  # root, three per unit, one per projected shortcut
    assert sum(isinstance(m, StdConv2d) for m in teacher.encoder.modules()) == 1 + 3 * 16 + 3
    assert teacher.encoder.pool.padding == 0 and teacher.encoder.pool.stride == 2
    layer = teacher.transformer.layers[0]
    assert layer.attention_norm.eps == 1e-6 and layer.ffn.fc1.out_features == 3072
    assert teacher.segmentation_head.in_channels == 16 and teacher.segmentation_head.kernel_size == (3, 3)
    with torch.no_grad():
        out = teacher(torch.rand(1, 1, 224, 224), return_features=True)
    # Stage 1 gives 55x55 after the unpadded max-pool; its skip is zero-padded to 56.
    assert [tuple(s.shape[1:]) for s in out.skips] == [(512, 28, 28), (256, 56, 56), (64, 112, 112)]
    assert out.encoder_map.shape == (1, 1024, 14, 14) and out.tokens[-1].shape == (1, 196, 768)
    assert [d.shape[1] for d in out.decoder_features] == [256, 128, 64, 16]
    assert out.logits.shape == (1, 9, 224, 224)


def test_default_student_is_under_a_tenth_of_teacher_params_and_macs(teacher):
    student = create_model("student-shsa")
    assert count_parameters(student) * 10 <= count_parameters(teacher)
    teacher_macs, student_macs = count_macs(teacher, 224), count_macs(student, 224)
    assert 29.0e9 < teacher_macs < 29.5e9  # 58.45 GFLOP / 2, the reference sheet's figure
    assert student_macs * 10 <= teacher_macs
    assert set(list_models()) >= {"teacher-r50-b16", "student-shsa", "student-mhsa"}
    assert get_config("student-mhsa").attention == "mhsa"
    assert get_config("student-shsa").hidden_size == get_config("student-mhsa").hidden_size


# Every registered configuration; one transformer layer keeps the teacher affordable and
# changes neither the shapes nor what the taps and gradients tests check.
ALL_MODELS = list_models()


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("size, classes", [((32, 32), 2), ((64, 96), 9), ((128, 64), 5)])
def test_output_shapes(name, size, classes):
    model = create_model(name, num_classes=classes, img_size=64, depth=1).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, *size))
    assert out.shape == (2, classes, *size)


def test_rgb_input_for_video_frames():
    model = create_model("student-shsa-tiny", num_classes=2, img_size=64, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_teacher_output_shape_on_a_non_square_input(teacher):
    with torch.no_grad():
        assert teacher(torch.rand(1, 1, 32, 48)).shape == (1, 9, 32, 48)


@pytest.mark.parametrize("shape, match", [((1, 1, 100, 64), "multiples of 16"), ((1, 1, 16, 16), ">= 32"),
                                          ((1, 2, 64, 64), "1 input channel"), ((1, 64, 64), "shape")])
def test_invalid_inputs_raise_value_error(shape, match):
    model = create_model("student-shsa-tiny", img_size=64)
    with pytest.raises(ValueError, match=match):
        model(torch.rand(*shape))


def test_invalid_construction_raises_value_error():
    with pytest.raises(ValueError, match="floating-point"):
        create_model("student-shsa-tiny", img_size=64)(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("student-shsa-tiny", img_size=100)
    with pytest.raises(ValueError, match="in_channels must be 1"):
        create_model("student-shsa-tiny", in_channels=2)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("student-shsa-tiny", num_classes=1)
    with pytest.raises(ValueError, match="unknown model 'resnet'; known models: teacher-r50-b16"):
        create_model("resnet")
    with pytest.raises(ValueError, match="unknown config field"):
        create_model("student-shsa", hidden=3)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        create_model("student-mhsa", hidden_size=250)


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


def test_multi_head_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    dim, heads = 16, 4
    layer = MultiHeadSelfAttention(dim, heads).eval()
    reference = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([layer.query.weight, layer.key.weight, layer.value.weight]))
        reference.in_proj_bias.copy_(torch.cat([layer.query.bias, layer.key.bias, layer.value.bias]))
        reference.out_proj.weight.copy_(layer.out.weight)
        reference.out_proj.bias.copy_(layer.out.bias)
    x = torch.randn(2, 7, dim)
    expected, expected_probs = reference(x, x, x, need_weights=True, average_attn_weights=False)
    fused, _ = layer(x)
    explicit, probs = layer(x, need_weights=True)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, expected_probs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_taps_do_not_change_logits_nor_the_mac_count(name):
    model = create_model(name, img_size=64, depth=1).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        plain, tapped = model(x), model(x, return_features=True)
    torch.testing.assert_close(plain, tapped.logits, atol=1e-5, rtol=1e-5)
    # The fused attention kernel of the plain path must be counted like the explicit matmuls.
    with torch.no_grad(), FlopCounterMode(display=False) as explicit:
        model(torch.zeros(1, 1, 64, 64), return_features=True)
    assert count_macs(model, 64) == explicit.get_total_flops() // 2


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_parameter_receives_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, img_size=32, depth=1, dropout=0.0)
    model(torch.rand(2, 1, 32, 32)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_feature_taps_shapes_and_zero_cost_default(teacher):
    model = create_model("student-shsa", img_size=64).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 96), return_features=True)
        plain = model(torch.rand(2, 1, 64, 96))
    assert isinstance(plain, torch.Tensor)
    assert isinstance(out, TransUNetOutput)
    n = 4 * 6
    assert out.grid == (4, 6)
    assert len(out.tokens) == 4 and all(t.shape == (2, n, 256) for t in out.tokens)
    assert len(out.attentions) == 4 and all(a.shape == (2, 1, n, n) for a in out.attentions)
    torch.testing.assert_close(out.attention_mean[0].sum(-1), torch.ones(2, n))
    assert [tuple(s.shape[1:]) for s in out.skips] == [(256, 8, 12), (128, 16, 24), (32, 32, 48)]
    assert out.encoder_map.shape == (2, 512, 4, 6)
    assert [tuple(d.shape[1:]) for d in out.decoder_features] == [(128, 8, 12), (64, 16, 24), (32, 32, 48),
                                                                   (16, 64, 96)]
    with torch.no_grad():
        teacher_out = teacher(torch.rand(1, 1, 64, 64), return_features=True)
    assert teacher_out.attentions[0].shape == (1, 12, 16, 16) and len(teacher_out.tokens) == 12
    torch.testing.assert_close(teacher_out.attention_mean[5], teacher_out.attentions[5].mean(1))
    assert [s.shape[1] for s in teacher_out.skips] == [512, 256, 64]


def test_seeded_construction_and_forward_are_deterministic():
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = create_model("student-shsa-tiny", img_size=32)
        model.train()
        torch.manual_seed(8)
        outs.append(model(torch.ones(1, 1, 32, 32)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
