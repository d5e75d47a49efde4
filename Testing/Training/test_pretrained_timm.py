"""model.pretrained: timm's vit_base_r50_s16_224 state dict loads the same tensors as the official npz.

timm cannot be installed here without torchvision, so the timm-style state dict is built
with timm's documented key names and its npz -> PyTorch conversion rules (HWIO -> OIHW
convolutions, query/key/value kernels stacked into one ``qkv`` matrix, the class token kept
in ``pos_embed``). The key list was checked against ``timm.create_model(
"vit_base_r50_s16_224.orig_in21k").state_dict()`` of timm 1.0.31 (306 tensors at depth 12).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kdseg_train.models import create_model
from kdseg_train.models.pretrained import load_pretrained
from kdseg_train.models.timm_vit_r50 import read_state_dict
from test_vit_npz import official_like_npz

DEPTH = 2


def timm_state_from_npz(arrays, depth=DEPTH):
    """The state dict timm builds from the official npz arrays (timm names, PyTorch layouts)."""
    def conv(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1)))

    def vec(a):
        return torch.from_numpy(np.ascontiguousarray(a.reshape(-1)))

    state = {"cls_token": torch.from_numpy(arrays["cls"]),
             "pos_embed": torch.from_numpy(arrays["Transformer/posembed_input/pos_embedding"]),
             "patch_embed.backbone.stem.conv.weight": conv(arrays["conv_root/kernel"]),
             "patch_embed.backbone.stem.norm.weight": vec(arrays["gn_root/scale"]),
             "patch_embed.backbone.stem.norm.bias": vec(arrays["gn_root/bias"]),
             "patch_embed.proj.weight": conv(arrays["embedding/kernel"]),
             "patch_embed.proj.bias": vec(arrays["embedding/bias"]),
             "norm.weight": vec(arrays["Transformer/encoder_norm/scale"]),
             "norm.bias": vec(arrays["Transformer/encoder_norm/bias"])}
    for b, units in enumerate((3, 4, 9)):
        for u in range(units):
            src, dst = f"block{b + 1}/unit{u + 1}/", f"patch_embed.backbone.stages.{b}.blocks.{u}."
            for i in (1, 2, 3):
                state[f"{dst}conv{i}.weight"] = conv(arrays[f"{src}conv{i}/kernel"])
                state[f"{dst}norm{i}.weight"] = vec(arrays[f"{src}gn{i}/scale"])
                state[f"{dst}norm{i}.bias"] = vec(arrays[f"{src}gn{i}/bias"])
            if u == 0:
                state[f"{dst}downsample.conv.weight"] = conv(arrays[f"{src}conv_proj/kernel"])
                state[f"{dst}downsample.norm.weight"] = vec(arrays[f"{src}gn_proj/scale"])
                state[f"{dst}downsample.norm.bias"] = vec(arrays[f"{src}gn_proj/bias"])
    d = 768
    for layer in range(depth):
        src, dst = f"Transformer/encoderblock_{layer}/", f"blocks.{layer}."
        att = src + "MultiHeadDotProductAttention_1/"
        state[dst + "attn.qkv.weight"] = torch.cat([torch.from_numpy(arrays[f"{att}{n}/kernel"].reshape(d, d).T)
                                                    for n in ("query", "key", "value")])
        state[dst + "attn.qkv.bias"] = torch.cat([vec(arrays[f"{att}{n}/bias"]) for n in ("query", "key", "value")])
        state[dst + "attn.proj.weight"] = torch.from_numpy(arrays[f"{att}out/kernel"].reshape(d, d).T.copy())
        state[dst + "attn.proj.bias"] = vec(arrays[f"{att}out/bias"])
        for i, name in ((0, "fc1"), (1, "fc2")):
            state[f"{dst}mlp.{name}.weight"] = torch.from_numpy(arrays[f"{src}MlpBlock_3/Dense_{i}/kernel"].T.copy())
            state[f"{dst}mlp.{name}.bias"] = vec(arrays[f"{src}MlpBlock_3/Dense_{i}/bias"])
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            state[f"{dst}{name}.weight"] = vec(arrays[f"{src}{ln}/scale"])
            state[f"{dst}{name}.bias"] = vec(arrays[f"{src}{ln}/bias"])
    return state


@pytest.fixture(scope="module")
def arrays():
    return official_like_npz(depth=DEPTH)


def teacher():
    torch.manual_seed(0)  # the decoder is not in the files: the same initialisation for every copy
    return create_model("teacher-r50-b16", img_size=64, depth=DEPTH)


def test_timm_safetensors_and_official_npz_give_identical_weights(arrays, tmp_path):
    np.savez(tmp_path / "R50+ViT-B_16.npz", **arrays)
    state = timm_state_from_npz(arrays)
    assert len(state) == 306 - 12 * (12 - DEPTH)  # timm 1.0.31 at depth 12: 306 tensors
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")
    from_npz, from_timm = teacher(), teacher()
    loaded = load_pretrained(from_npz, tmp_path / "R50+ViT-B_16.npz")
    assert load_pretrained(from_timm, tmp_path / "model.safetensors") == loaded
    npz_params, timm_params = dict(from_npz.named_parameters()), dict(from_timm.named_parameters())
    for name in loaded:
        torch.testing.assert_close(timm_params[name], npz_params[name], rtol=0, atol=0)
    from_bin = read_state_dict(tmp_path / "pytorch_model.bin")  # torch.load(weights_only=True)
    assert from_bin.keys() == state.keys() and all(torch.equal(from_bin[k], state[k]) for k in state)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(from_timm.eval()(x), from_npz.eval()(x))


def test_wrong_files_name_what_differs(arrays, tmp_path):
    state = timm_state_from_npz(arrays)
    renamed = dict(state)
    renamed["fc_norm.weight"] = renamed.pop("norm.weight")
    save_file({k: v.contiguous() for k, v in renamed.items()}, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(ValueError, match=r"renamed.safetensors: not timm vit_base_r50_s16_224 weights.*1 key\(s\) "
                                         r"the model needs are missing \(norm.weight\); 1 key\(s\) are not part of "
                                         r"timm's vit_base_r50_s16 \(fc_norm.weight\)"):
        load_pretrained(teacher(), tmp_path / "renamed.safetensors")
    wider = dict(state)
    wider["patch_embed.proj.weight"] = torch.zeros(1024, 1024, 1, 1)  # a ViT-L projection
    save_file({k: v.contiguous() for k, v in wider.items()}, str(tmp_path / "large.safetensors"))
    with pytest.raises(ValueError, match=r"embeddings.patch_embeddings.weight \(1024, 1024, 1, 1\) vs "
                                         r"\(768, 1024, 1, 1\)"):
        load_pretrained(teacher(), tmp_path / "large.safetensors")
    no_resnet = {k: v for k, v in arrays.items() if not k.startswith(("conv_root", "gn_root", "block"))}
    np.savez(tmp_path / "ViT-B_16.npz", **no_resnet)  # the pure ViT file, no R50 backbone
    with pytest.raises(ValueError, match=r"ViT-B_16.npz is not the R50\+ViT-B_16 ImageNet-21k file.*"
                                         r"'conv_root/kernel'"):
        load_pretrained(teacher(), tmp_path / "ViT-B_16.npz")
    (tmp_path / "weights.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unknown file type '.ckpt'"):
        load_pretrained(teacher(), tmp_path / "weights.ckpt")
    with pytest.raises(ValueError, match="multi-head attention"):
        load_pretrained(create_model("student-shsa", img_size=64), tmp_path / "renamed.safetensors")


def test_a_wrong_pretrained_file_stops_training_before_any_step(arrays, tmp_path, shared_data, capsys):
    import yaml

    from kdseg_train.cli import main as kdseg_train

    state = timm_state_from_npz(arrays)
    state["head.weight"] = torch.zeros(21843, 768)  # harmless: the classifier is not used
    state.pop("blocks.1.mlp.fc2.bias")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    ts = shared_data / "ct" / "totalsegmentator_example"
    config = {"model": {"name": "teacher-r50-b16", "img_size": 32, "overrides": {"depth": DEPTH},
                        "pretrained": str(tmp_path / "model.safetensors")},
              "data": {"train": [{"image": str(ts / "example_ct_sm.nii.gz"), "label": str(ts / "example_seg.nii.gz"),
                                  "remap": "totalsegmentator"}], "batch_size": 2},
              "train": {"max_steps": 2}, "output": str(tmp_path / "run")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert kdseg_train(["train", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: not timm vit_base_r50_s16_224 weights" in err and "blocks.1.mlp.fc2.bias" in err
    assert not (tmp_path / "run").exists()
