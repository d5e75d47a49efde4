"""ImageNet-21k R50+ViT-B/16 loader, on an npz with the official key names and shapes made here."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from kdseg_train.models import create_model
from kdseg_train.models.vit_npz import load_vit_r50_npz


def official_like_npz(depth=12, units=(3, 4, 9), width=64, d=768, heads=12, mlp=3072, grid=14, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}

    def put(key, *shape):
        arrays[key] = rng.standard_normal(shape).astype(np.float32)

    put("conv_root/kernel", 7, 7, 3, width)
    put("gn_root/scale", width)
    put("gn_root/bias", width)
    cin = width
    for b, n in enumerate(units):
        cout, cmid = width * 4 * 2 ** b, width * 2 ** b
        for u in range(n):
            p = f"block{b + 1}/unit{u + 1}/"
            put(p + "conv1/kernel", 1, 1, cin if u == 0 else cout, cmid)
            put(p + "conv2/kernel", 3, 3, cmid, cmid)
            put(p + "conv3/kernel", 1, 1, cmid, cout)
            for g, c in (("gn1", cmid), ("gn2", cmid), ("gn3", cout)):
                put(p + g + "/scale", c)
                put(p + g + "/bias", c)
            if u == 0:
                put(p + "conv_proj/kernel", 1, 1, cin, cout)
                put(p + "gn_proj/scale", cout)
                put(p + "gn_proj/bias", cout)
        cin = cout
    put("embedding/kernel", 1, 1, cin, d)
    put("embedding/bias", d)
    put("Transformer/posembed_input/pos_embedding", 1, grid * grid + 1, d)
    put("Transformer/encoder_norm/scale", d)
    put("Transformer/encoder_norm/bias", d)
    put("cls", 1, 1, d)
    put("head/kernel", d, 21843)
    for i in range(depth):
        p = f"Transformer/encoderblock_{i}/"
        for n in ("query", "key", "value"):
            put(p + f"MultiHeadDotProductAttention_1/{n}/kernel", d, heads, d // heads)
            put(p + f"MultiHeadDotProductAttention_1/{n}/bias", heads, d // heads)
        put(p + "MultiHeadDotProductAttention_1/out/kernel", heads, d // heads, d)
        put(p + "MultiHeadDotProductAttention_1/out/bias", d)
        put(p + "MlpBlock_3/Dense_0/kernel", d, mlp)
        put(p + "MlpBlock_3/Dense_0/bias", mlp)
        put(p + "MlpBlock_3/Dense_1/kernel", mlp, d)
        put(p + "MlpBlock_3/Dense_1/bias", d)
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            put(p + ln + "/scale", d)
            put(p + ln + "/bias", d)
    return arrays


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit") / "R50+ViT-B_16.npz"
    np.savez(path, **official_like_npz())
    return path


def test_every_encoder_parameter_of_the_teacher_is_loaded(npz_file):
    teacher = create_model("teacher-r50-b16", img_size=224)
    loaded = load_vit_r50_npz(teacher, npz_file)
    encoder = [n for n, _ in teacher.named_parameters() if n.startswith(("encoder.", "embeddings.", "transformer."))]
    assert sorted(encoder) == loaded
    w = np.load(npz_file)
    q = w["Transformer/encoderblock_3/MultiHeadDotProductAttention_1/query/kernel"].reshape(768, 768)
    x = torch.randn(2, 768)
    layer = teacher.transformer.layers[3].attn.query
    expected = x @ torch.from_numpy(q) + torch.from_numpy(
        w["Transformer/encoderblock_3/MultiHeadDotProductAttention_1/query/bias"].reshape(-1))
    torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)
    conv = w["block2/unit1/conv2/kernel"]  # HWIO
    torch.testing.assert_close(teacher.encoder.stages[1][0].conv2.weight[5, 7], torch.from_numpy(conv[:, :, 7, 5]))
    pos = w["Transformer/posembed_input/pos_embedding"][:, 1:]
    torch.testing.assert_close(teacher.embeddings.position_embeddings, torch.from_numpy(pos))


def test_position_grid_is_resized_for_other_input_sizes():
    weights = official_like_npz(depth=2)
    model = create_model("teacher-r50-b16", img_size=128, depth=2)
    load_vit_r50_npz(model, weights)
    assert model.embeddings.position_embeddings.shape == (1, 64, 768)
    # The official TransUNet resize: drop the class token, order-1 zoom of the 14x14 grid.
    grid = weights["Transformer/posembed_input/pos_embedding"][0, 1:].reshape(14, 14, 768)
    official = ndimage.zoom(grid, (8 / 14, 8 / 14, 1), order=1).reshape(1, 64, 768)
    torch.testing.assert_close(model.embeddings.position_embeddings.detach(), torch.from_numpy(official),
                               atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert model(torch.rand(1, 1, 128, 128)).shape == (1, 9, 128, 128)


def test_incompatible_models_are_refused_with_the_reason():
    weights = official_like_npz(depth=1)
    with pytest.raises(ValueError, match="multi-head"):
        load_vit_r50_npz(create_model("student-shsa", img_size=64), weights)
    with pytest.raises(ValueError, match="1 transformer layers, the model 12"):
        load_vit_r50_npz(create_model("teacher-r50-b16", img_size=64), weights)
