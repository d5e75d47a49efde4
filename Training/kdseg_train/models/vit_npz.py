"""Load the official ImageNet-21k ``R50+ViT-B_16.npz`` (Google ViT release) into a TransUNet encoder.

The file stores JAX/Flax arrays: convolution kernels HWIO, attention kernels split per
head, and a 14x14 (+ class token) position table. This loader maps every key to our
module names, transposes as needed, drops the class token and resizes the position grid
bilinearly, corner-aligned, when the model's grid differs (the same values as the official
code's ``scipy.ndimage.zoom(order=1)``). The
decoder and segmentation head are not in the file and keep their initialisation.
Nothing is unpickled: ``np.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from .transunet import TransUNet

__all__ = ["load_vit_r50_npz"]

_log = logging.getLogger("kdseg_train")


def _conv(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(3, 2, 0, 1)))


def _vec(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.reshape(-1)))


def _resize_positions(table: np.ndarray, grid_h: int, grid_w: int) -> torch.Tensor:
    tokens = torch.from_numpy(np.ascontiguousarray(table))
    if tokens.shape[1] != int(round(tokens.shape[1] ** 0.5)) ** 2:
        tokens = tokens[:, 1:]  # drop the class token: TransUNet has none
    side = int(round(tokens.shape[1] ** 0.5))
    if (side, side) == (grid_h, grid_w):
        return tokens
    dim = tokens.shape[-1]
    grid = tokens.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    # align_corners=True is exactly the official scipy.ndimage.zoom(order=1) (tested).
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear", align_corners=True)
    return grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)


def _mapping(model: TransUNet, weights: Mapping[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    cfg = model.config
    d = cfg.hidden_size
    out: Dict[str, torch.Tensor] = {
        "encoder.root.0.weight": _conv(weights["conv_root/kernel"]),
        "encoder.root.1.weight": _vec(weights["gn_root/scale"]),
        "encoder.root.1.bias": _vec(weights["gn_root/bias"]),
        "embeddings.patch_embeddings.weight": _conv(weights["embedding/kernel"]),
        "embeddings.patch_embeddings.bias": _vec(weights["embedding/bias"]),
        "embeddings.position_embeddings": _resize_positions(
            weights["Transformer/posembed_input/pos_embedding"], model.embeddings.grid, model.embeddings.grid),
        "transformer.encoder_norm.weight": _vec(weights["Transformer/encoder_norm/scale"]),
        "transformer.encoder_norm.bias": _vec(weights["Transformer/encoder_norm/bias"]),
    }
    for stage, units in enumerate(cfg.cnn_units):
        for unit in range(units):
            src = f"block{stage + 1}/unit{unit + 1}/"
            dst = f"encoder.stages.{stage}.{unit}."
            for i in (1, 2, 3):
                out[f"{dst}conv{i}.weight"] = _conv(weights[f"{src}conv{i}/kernel"])
                out[f"{dst}gn{i}.weight"] = _vec(weights[f"{src}gn{i}/scale"])
                out[f"{dst}gn{i}.bias"] = _vec(weights[f"{src}gn{i}/bias"])
            if unit == 0:
                out[f"{dst}downsample.weight"] = _conv(weights[f"{src}conv_proj/kernel"])
                out[f"{dst}gn_proj.weight"] = _vec(weights[f"{src}gn_proj/scale"])
                out[f"{dst}gn_proj.bias"] = _vec(weights[f"{src}gn_proj/bias"])
    for layer in range(cfg.depth):
        src = f"Transformer/encoderblock_{layer}/"
        dst = f"transformer.layers.{layer}."
        att = src + "MultiHeadDotProductAttention_1/"
        for name in ("query", "key", "value"):
            out[f"{dst}attn.{name}.weight"] = torch.from_numpy(weights[f"{att}{name}/kernel"].reshape(d, d).T.copy())
            out[f"{dst}attn.{name}.bias"] = _vec(weights[f"{att}{name}/bias"])
        out[f"{dst}attn.out.weight"] = torch.from_numpy(weights[f"{att}out/kernel"].reshape(d, d).T.copy())
        out[f"{dst}attn.out.bias"] = _vec(weights[f"{att}out/bias"])
        for i, name in ((0, "fc1"), (1, "fc2")):
            out[f"{dst}ffn.{name}.weight"] = torch.from_numpy(weights[f"{src}MlpBlock_3/Dense_{i}/kernel"].T.copy())
            out[f"{dst}ffn.{name}.bias"] = _vec(weights[f"{src}MlpBlock_3/Dense_{i}/bias"])
        out[f"{dst}attention_norm.weight"] = _vec(weights[f"{src}LayerNorm_0/scale"])
        out[f"{dst}attention_norm.bias"] = _vec(weights[f"{src}LayerNorm_0/bias"])
        out[f"{dst}ffn_norm.weight"] = _vec(weights[f"{src}LayerNorm_2/scale"])
        out[f"{dst}ffn_norm.bias"] = _vec(weights[f"{src}LayerNorm_2/bias"])
    return out


def load_vit_r50_npz(model: TransUNet, source: Union[str, Path, Mapping[str, np.ndarray]]) -> List[str]:
    """Copy ImageNet-21k R50+ViT-B/16 weights into ``model``'s encoder and transformer.

    Args:
        model: a TransUNet with multi-head attention and the file's widths (the teacher).
        source: path of ``R50+ViT-B_16.npz`` or an already-loaded mapping of its arrays.

    Returns:
        Names of the model parameters that were loaded.

    Raises:
        ValueError: the model cannot take these weights (attention type, widths), naming the mismatch.
        KeyError: the file lacks a key this architecture needs (the key is named).
    """
    if model.config.attention != "mhsa":
        raise UsageError("ImageNet-21k ViT weights need multi-head attention (config attention='mhsa')")
    weights = np.load(str(source), allow_pickle=False) if isinstance(source, (str, Path)) else source
    depth_in_file = sum(1 for k in weights.keys() if k.endswith("MlpBlock_3/Dense_0/kernel"))
    if depth_in_file < model.config.depth:
        raise UsageError(f"the file has {depth_in_file} transformer layers, the model {model.config.depth}")
    if depth_in_file > model.config.depth:
        _log.warning("loading the first %d of %d transformer layers", model.config.depth, depth_in_file)
    tensors = _mapping(model, weights)
    state = model.state_dict()
    for name, tensor in tensors.items():
        if state[name].shape != tensor.shape:
            raise UsageError(f"{name}: the file gives shape {tuple(tensor.shape)}, the model needs "
                             f"{tuple(state[name].shape)}")
    model.load_state_dict(tensors, strict=False)
    return sorted(tensors)
