"""Deployable exports: ONNX for the Lib/Slicer, safetensors + JSON config for PyTorch users.

Before ONNX export the network is folded for inference: weight standardisation is
applied once to the stored weights (StdConv2d -> Conv2d) and every BatchNorm that
follows a convolution is fused into it, so the graph holds plain convolutions.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .models import TransUNet, TransUNetConfig
from .models.resnet_v2 import StdConv2d

__all__ = ["fold_for_inference", "export_onnx", "check_onnx_parity", "export_safetensors",
           "load_safetensors_model", "ONNX_INPUT_NAME", "ONNX_OUTPUT_NAME"]

ONNX_INPUT_NAME = "image"
ONNX_OUTPUT_NAME = "logits"


def fold_for_inference(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy with standardised conv weights baked in and Conv+BN fused."""
    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, StdConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 child.padding, child.dilation, child.groups, child.bias is not None)
                with torch.no_grad():
                    conv.weight.copy_(child.standardized_weight())
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, name, conv)
        if isinstance(parent, nn.Sequential):
            items = list(parent._modules.items())
            for (name_a, a), (name_b, b) in zip(items, items[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    parent._modules[name_a] = fuse_conv_bn_eval(a, b)
                    parent._modules[name_b] = nn.Identity()
    return folded


def _atomic_target(path: Path) -> Tuple[Path, Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return path, Path(tmp)


def export_onnx(model: nn.Module, path: Union[str, Path], img_size: int, opset: int = 17,
                check: bool = True, atol: float = 1e-3) -> Path:
    """Write ``model`` as ONNX: input ``image`` (N, C, S, S) float32 -> ``logits``, dynamic N.

    Uses the TorchScript-based exporter (``dynamo=False``), which produces a compact
    static graph for this architecture; the file is written to a temporary name and
    renamed only after it loaded (and, with ``check``, matched PyTorch) in ONNX Runtime.

    Args:
        model: a :class:`TransUNet` (any mode; a folded eval copy is exported).
        path: destination ``.onnx`` file.
        img_size: spatial input size baked into the graph (multiple of 16).
        opset: ONNX opset (>= 17).
        check: compare ONNX Runtime with PyTorch on a random batch.
        atol: maximum absolute logit difference accepted by the check.

    Raises:
        ValueError: invalid ``img_size``/``opset``.
        RuntimeError: ONNX Runtime disagrees with PyTorch beyond ``atol``.
    """
    if img_size % 16:
        raise ValueError(f"img_size must be a multiple of 16, got {img_size}")
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    folded = fold_for_inference(model)
    in_channels = getattr(model, "in_channels", 1)
    dummy = torch.zeros(1, in_channels, img_size, img_size)
    path, tmp = _atomic_target(Path(path))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about Python branches on input shape checks; those are
            # constant for the fixed spatial size being exported.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                folded, (dummy,), str(tmp), input_names=[ONNX_INPUT_NAME], output_names=[ONNX_OUTPUT_NAME],
                dynamic_axes={ONNX_INPUT_NAME: {0: "batch"}, ONNX_OUTPUT_NAME: {0: "batch"}},
                opset_version=opset, dynamo=False, do_constant_folding=True,
            )
        if check:
            generator = torch.Generator().manual_seed(0)
            sample = torch.rand(2, in_channels, img_size, img_size, generator=generator)
            diff = check_onnx_parity(model, tmp, sample)
            if diff > atol:
                raise RuntimeError(
                    f"ONNX export of {type(model).__name__} differs from PyTorch by {diff:.2e} "
                    f"(> {atol:.0e}); the file was not written"
                )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def check_onnx_parity(model: nn.Module, onnx_path: Union[str, Path], batch: torch.Tensor) -> float:
    """Max |logit difference| between PyTorch (eval) and ONNX Runtime (CPU) on ``batch``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = model(batch).numpy()
    model.train(was_training)
    actual = session.run([ONNX_OUTPUT_NAME], {ONNX_INPUT_NAME: batch.numpy().astype(np.float32)})[0]
    return float(np.abs(actual - expected).max())


def export_safetensors(model: TransUNet, directory: Union[str, Path], extra: Dict[str, object] = None
                       ) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (architecture + sizes) into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights, tmp = _atomic_target(directory / "model.safetensors")
    save_file(state, str(tmp))
    os.replace(tmp, weights)
    config = {"config": model.config.to_dict(), "num_classes": model.num_classes,
              "img_size": model.img_size, "in_channels": model.in_channels}
    if extra:
        config.update(extra)
    cfg_path, tmp = _atomic_target(directory / "config.json")
    tmp.write_text(json.dumps(config, indent=2), encoding="utf-8")
    os.replace(tmp, cfg_path)
    return weights


def load_safetensors_model(directory: Union[str, Path]) -> TransUNet:
    """Rebuild a :class:`TransUNet` from :func:`export_safetensors` output (no pickle)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    model = TransUNet(TransUNetConfig.from_dict(meta["config"]), meta["num_classes"], meta["img_size"],
                      meta["in_channels"])
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.eval()
