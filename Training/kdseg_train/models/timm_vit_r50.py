"""Load timm's ``vit_base_r50_s16_224.orig_in21k`` weights (the same ImageNet-21k R50+ViT-B/16) into a TransUNet.

timm ports the official ``R50+ViT-B_16.npz`` into PyTorch names. Its state dict, as
``timm.create_model("vit_base_r50_s16_224.orig_in21k").state_dict()`` (timm 1.0) holds 306
tensors:

=====================================================================  ==========================================
timm key                                                               TransUNet parameter
=====================================================================  ==========================================
``patch_embed.backbone.stem.conv.weight`` / ``stem.norm.{weight,bias}``  ``encoder.root.0`` / ``encoder.root.1``
``patch_embed.backbone.stages.S.blocks.U.conv{1,2,3}.weight``            ``encoder.stages.S.U.conv{1,2,3}.weight``
``patch_embed.backbone.stages.S.blocks.U.norm{1,2,3}.*``                 ``encoder.stages.S.U.gn{1,2,3}.*``
``patch_embed.backbone.stages.S.blocks.0.downsample.conv.weight``        ``encoder.stages.S.0.downsample.weight``
``patch_embed.backbone.stages.S.blocks.0.downsample.norm.*``             ``encoder.stages.S.0.gn_proj.*``
``patch_embed.proj.*``                                                 ``embeddings.patch_embeddings.*``
``pos_embed`` (1, 197, 768), class token first                         ``embeddings.position_embeddings`` (resized)
``blocks.L.norm1.*`` / ``blocks.L.norm2.*``                             ``transformer.layers.L.attention_norm`` / ``ffn_norm``
``blocks.L.attn.qkv.*`` (rows query, key, value)                       ``transformer.layers.L.attn.{query,key,value}``
``blocks.L.attn.proj.*``                                               ``transformer.layers.L.attn.out.*``
``blocks.L.mlp.fc1.*`` / ``blocks.L.mlp.fc2.*``                         ``transformer.layers.L.ffn.fc1`` / ``fc2``
``norm.*``                                                             ``transformer.encoder_norm.*``
``cls_token``, ``head.*``                                              not used (TransUNet has neither)
=====================================================================  ==========================================

Files are read without unpickling: ``.safetensors`` with safetensors, ``.pth``/``.pt``/
``.bin`` with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Union

import torch

from ..errors import UsageError
from .transunet import TransUNet
from .vit_npz import _resize_positions

__all__ = ["load_timm_vit_r50", "read_state_dict", "timm_to_transunet"]

_UNUSED = ("cls_token", "head.weight", "head.bias")


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save`` state dict (``weights_only``, nothing unpickled).

    Raises:
        ValueError: another file type, or a file that is not a flat mapping of tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in (".pth", ".pt", ".bin"):
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corrupt file is one message
            raise UsageError(f"{path} is not a plain PyTorch state dict ({exc})") from None
        if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise UsageError(f"{path} does not hold a mapping of parameter names to tensors")
        return dict(loaded)
    raise UsageError(f"{path}: unknown weights format {path.suffix!r}; give .safetensors, .pth, .pt or .bin")


def timm_to_transunet(model: TransUNet, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The TransUNet tensors of a timm ``vit_base_r50_s16`` state dict (see the module table).

    Raises:
        ValueError: keys missing from or unknown to this architecture, or shapes that differ,
            each listed by name (at most five of each kind, with the counts).
    """
    cfg = model.config
    d = cfg.hidden_size
    backbone = "patch_embed.backbone."
    plan: Dict[str, str] = {  # timm key -> ours (qkv handled below)
        backbone + "stem.conv.weight": "encoder.root.0.weight",
        backbone + "stem.norm.weight": "encoder.root.1.weight",
        backbone + "stem.norm.bias": "encoder.root.1.bias",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.bias",
        "norm.weight": "transformer.encoder_norm.weight",
        "norm.bias": "transformer.encoder_norm.bias",
    }
    for stage, units in enumerate(cfg.cnn_units):
        for unit in range(units):
            src, dst = f"{backbone}stages.{stage}.blocks.{unit}.", f"encoder.stages.{stage}.{unit}."
            for i in (1, 2, 3):
                plan[f"{src}conv{i}.weight"] = f"{dst}conv{i}.weight"
                plan[f"{src}norm{i}.weight"] = f"{dst}gn{i}.weight"
                plan[f"{src}norm{i}.bias"] = f"{dst}gn{i}.bias"
            if unit == 0:
                plan[f"{src}downsample.conv.weight"] = f"{dst}downsample.weight"
                plan[f"{src}downsample.norm.weight"] = f"{dst}gn_proj.weight"
                plan[f"{src}downsample.norm.bias"] = f"{dst}gn_proj.bias"
    qkv = []
    for layer in range(cfg.depth):
        src, dst = f"blocks.{layer}.", f"transformer.layers.{layer}."
        plan.update({f"{src}norm1.weight": f"{dst}attention_norm.weight",
                     f"{src}norm1.bias": f"{dst}attention_norm.bias",
                     f"{src}norm2.weight": f"{dst}ffn_norm.weight", f"{src}norm2.bias": f"{dst}ffn_norm.bias",
                     f"{src}attn.proj.weight": f"{dst}attn.out.weight", f"{src}attn.proj.bias": f"{dst}attn.out.bias",
                     f"{src}mlp.fc1.weight": f"{dst}ffn.fc1.weight", f"{src}mlp.fc1.bias": f"{dst}ffn.fc1.bias",
                     f"{src}mlp.fc2.weight": f"{dst}ffn.fc2.weight", f"{src}mlp.fc2.bias": f"{dst}ffn.fc2.bias"})
        qkv += [(f"{src}attn.qkv.weight", f"{dst}attn."), (f"{src}attn.qkv.bias", f"{dst}attn.")]
    expected = set(plan) | {k for k, _ in qkv} | {"pos_embed"}
    # Layers beyond the model's depth (a shallower model) are not an error: the first ones are used.
    deeper = {k for k in state if k.startswith("blocks.") and int(k.split(".")[1]) >= cfg.depth}
    missing = sorted(expected - set(state))
    unknown = sorted(set(state) - expected - set(_UNUSED) - deeper)
    problems = []
    if missing:
        problems.append(f"{len(missing)} key(s) the model needs are missing ({', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''})")
    if unknown:
        problems.append(f"{len(unknown)} key(s) are not part of timm's vit_base_r50_s16 ({', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''})")
    if problems:
        raise UsageError("not timm vit_base_r50_s16_224 weights for this model: " + "; ".join(problems))
    out = {ours: state[theirs] for theirs, ours in plan.items()}
    for key, prefix in qkv:
        kind = key.rsplit(".", 1)[1]
        tensor = state[key]
        if tensor.shape[0] != 3 * d:
            needs = (3 * d, d) if kind == "weight" else (3 * d,)
            raise UsageError(f"{key}: shape {tuple(tensor.shape)}, the model needs {needs}")
        for name, part in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
            out[f"{prefix}{name}.{kind}"] = part
    out["embeddings.position_embeddings"] = _resize_positions(state["pos_embed"].float().numpy(),
                                                              model.embeddings.grid, model.embeddings.grid)
    return out


def load_timm_vit_r50(model: TransUNet, source: Union[str, Path, Mapping[str, torch.Tensor]]) -> List[str]:
    """Copy timm's R50+ViT-B/16 weights into ``model``'s encoder and transformer.

    Args:
        model: a TransUNet with multi-head attention and the file's widths (the teacher).
        source: a ``.safetensors`` / ``.pth`` file, or a loaded state dict.

    Returns:
        Names of the model parameters that were loaded.

    Raises:
        ValueError: wrong architecture, keys or shapes (named in the message).
    """
    if model.config.attention != "mhsa":
        raise UsageError("ImageNet-21k ViT weights need multi-head attention (config attention='mhsa')")
    state = read_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    tensors = timm_to_transunet(model, state)
    own = model.state_dict()
    wrong = [f"{name} {tuple(t.shape)} vs {tuple(own[name].shape)}" for name, t in tensors.items()
             if own[name].shape != t.shape]
    if wrong:
        raise UsageError(f"{len(wrong)} tensor(s) have other shapes than the model (file vs model): "
                         f"{'; '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=False)
    return sorted(tensors)
