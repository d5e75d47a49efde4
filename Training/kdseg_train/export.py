"""Deployable exports: ONNX for the Lib/Slicer, safetensors + JSON config for PyTorch users.

Before ONNX export the network is folded for inference: weight standardisation is
applied once to the stored weights (StdConv2d -> Conv2d) and every BatchNorm that
follows a convolution is fused into it, so the graph holds plain convolutions. Nothing
here pickles: ONNX is protobuf, torch weights are safetensors with a JSON config.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from KDSegmentationLib.atomic_files import atomic_file, write_text_atomic
from KDSegmentationLib.written_file_checks import check_safetensors_complete

from .errors import UsageError
from .models import TransUNet, TransUNetConfig
from .models.resnet_v2 import Bottleneck, StdConv2d

__all__ = ["fold_for_inference", "export_onnx", "onnx_parity", "ParityReport", "check_onnx_parity",
           "export_safetensors", "load_safetensors_model", "ONNX_INPUT_NAME", "ONNX_OUTPUT_NAME"]

ONNX_INPUT_NAME = "image"
ONNX_OUTPUT_NAME = "logits"
SAFETENSORS_WEIGHTS = "model.safetensors"
SAFETENSORS_CONFIG = "config.json"
SAFETENSORS_FORMAT = "kdseg-transunet-safetensors/1"


# (conv, norm) attribute pairs of a Bottleneck: with BatchNorm encoders the norm follows the
# conv by name rather than by position in an nn.Sequential.
_BOTTLENECK_CONV_NORM = (("conv1", "gn1"), ("conv2", "gn2"), ("conv3", "gn3"), ("downsample", "gn_proj"))


def fold_for_inference(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy with standardised conv weights baked in and Conv+BN fused."""
    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, StdConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 child.padding, child.dilation, child.groups, child.bias is not None).eval()
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
        if isinstance(parent, Bottleneck):
            for conv_name, norm_name in _BOTTLENECK_CONV_NORM:
                conv, norm = getattr(parent, conv_name, None), getattr(parent, norm_name, None)
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
                    setattr(parent, norm_name, nn.Identity())
    return folded


@dataclass(frozen=True)
class ParityReport:
    """How closely ONNX Runtime reproduces PyTorch on one batch.

    Attributes:
        max_abs_diff: largest absolute logit difference.
        argmax_agreement: fraction of pixels whose predicted class is the same.
    """

    max_abs_diff: float
    argmax_agreement: float


def onnx_parity(model: nn.Module, onnx_path: Union[str, Path], batch: torch.Tensor) -> ParityReport:
    """Compare ``model`` (eval mode, unfolded) with the ONNX graph in ONNX Runtime (CPU) on ``batch``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(batch).numpy()
    finally:
        model.train(was_training)
    actual = session.run([ONNX_OUTPUT_NAME], {ONNX_INPUT_NAME: batch.numpy().astype(np.float32)})[0]
    if actual.shape != expected.shape:
        raise RuntimeError(f"ONNX output shape {actual.shape} differs from PyTorch's {expected.shape}")
    return ParityReport(float(np.abs(actual - expected).max()),
                        float((actual.argmax(1) == expected.argmax(1)).mean()))


def check_onnx_parity(model: nn.Module, onnx_path: Union[str, Path], batch: torch.Tensor) -> float:
    """Max |logit difference| between PyTorch (eval) and ONNX Runtime (CPU) on ``batch``."""
    return onnx_parity(model, onnx_path, batch).max_abs_diff


def _export_torchscript(model: nn.Module, dummy: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # The tracer warns about the Python shape checks in forward(); they are constant
        # for the spatial size being exported, and the batch axis stays symbolic.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (dummy,), str(path), input_names=[ONNX_INPUT_NAME], output_names=[ONNX_OUTPUT_NAME],
            dynamic_axes={ONNX_INPUT_NAME: {0: "batch"}, ONNX_OUTPUT_NAME: {0: "batch"}},
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )


def _export_dynamo(model: nn.Module, dummy: torch.Tensor, path: Path, opset: int) -> None:
    # A batch of 2 in the example: torch.export specialises a size-1 axis to the constant 1.
    dummy = dummy.expand(2, -1, -1, -1).contiguous()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch-internal pytree deprecation notices
        torch.onnx.export(
            model, (dummy,), str(path), input_names=[ONNX_INPUT_NAME], output_names=[ONNX_OUTPUT_NAME],
            dynamic_shapes={"x": {0: batch}}, opset_version=opset, dynamo=True, external_data=False,
            optimize=True, verbose=False,
        )


EXPORTERS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}


def export_onnx(model: nn.Module, path: Union[str, Path], img_size: int, opset: int = 17,
                check: bool = True, atol: float = 1e-3, exporter: str = "torchscript",
                cpu_rewrites: bool = True) -> Path:
    """Write ``model`` as ONNX: input ``image`` (N, C, S, S) float32 -> ``logits`` (N, K, S, S), dynamic N.

    The exported network is :func:`fold_for_inference` of ``model`` (weight
    standardisation baked in, every BatchNorm fused into its convolution), so the graph
    holds no BatchNormalization node; GroupNorm and LayerNorm normalise with statistics
    of the input itself and stay. Distillation taps are never exported: the graph is the
    plain ``forward(x)``. With ``cpu_rewrites`` the exported graph then gets the exact
    rewrites of :mod:`.onnx_cpu_rewrites` (grey-to-RGB repeat folded into the root
    convolution, decoder Concat/Pad -> Conv as a sum of convolutions), which ONNX Runtime
    runs faster on CPUs; the parity check below runs on the rewritten graph. The file is written under a temporary name and renamed only
    after ONNX Runtime loaded it and, with ``check``, matched PyTorch.

    Exporter: the TorchScript-based exporter (``dynamo=False``) is the default because it
    writes one self-contained file in a few seconds (the teacher's 420 MB included);
    ``exporter="dynamo"`` uses ``torch.export`` + onnxscript, gives the same logits
    (tested) and is about 7x slower to export; it is the path forward should a future
    torch drop the TorchScript exporter.

    Args:
        model: a :class:`TransUNet` (any mode; an eval-mode folded copy is exported).
        path: destination ``.onnx`` file (parent folders are created).
        img_size: spatial input size baked into the graph (a multiple of 16, >= 32).
        opset: ONNX opset (>= 17).
        check: compare ONNX Runtime with PyTorch on a random batch of 2.
        atol: maximum absolute logit difference the check accepts.
        exporter: ``"torchscript"`` or ``"dynamo"``.
        cpu_rewrites: apply :func:`.onnx_cpu_rewrites.rewrite_for_cpu` to the exported graph.

    Returns:
        ``path``.

    Raises:
        ValueError: invalid ``img_size``, ``opset`` or ``exporter``.
        RuntimeError: ONNX Runtime disagrees with PyTorch beyond ``atol`` (no file is left).
    """
    if img_size < 32 or img_size % 16:
        raise UsageError(f"img_size must be a multiple of 16 and at least 32, got {img_size}")
    if opset < 17:
        raise UsageError(f"opset must be >= 17 (LayerNormalization), got {opset}")
    if exporter not in EXPORTERS:
        raise UsageError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    folded = fold_for_inference(model)
    in_channels = int(getattr(model, "in_channels", 1))
    dummy = torch.zeros(1, in_channels, img_size, img_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        with torch.no_grad():
            EXPORTERS[exporter](folded, dummy, tmp, opset)
        if cpu_rewrites:
            import onnx

            from .onnx_cpu_rewrites import rewrite_for_cpu

            onnx.save(rewrite_for_cpu(onnx.load(str(tmp)))[0], str(tmp))
        if check:
            generator = torch.Generator().manual_seed(0)
            sample = torch.rand(2, in_channels, img_size, img_size, generator=generator)
            report = onnx_parity(model, tmp, sample)
            if not report.max_abs_diff <= atol:
                raise RuntimeError(
                    f"ONNX export of {type(model).__name__} differs from PyTorch by {report.max_abs_diff:.2e} "
                    f"(> {atol:.0e}) on a random input; {path} was not written. Export with float32 "
                    "weights in eval mode, or report the model config if it persists"
                )
    return path


def export_safetensors(model: TransUNet, directory: Union[str, Path],
                       extra: Optional[Dict[str, object]] = None) -> Path:
    """Write ``model.safetensors`` (state dict) and ``config.json`` into ``directory``.

    ``config.json`` holds ``{"config": <TransUNetConfig fields>, "num_classes", "img_size",
    "in_channels", "format": "kdseg-transunet-safetensors/1", **extra}``: everything
    :func:`load_safetensors_model` needs to rebuild the network without pickle. Each file
    is written atomically (temporary name, then rename).

    Args:
        model: the network to save.
        directory: destination folder (created if needed).
        extra: JSON-serialisable metadata merged into ``config.json`` (e.g. training steps).

    Returns:
        Path of ``model.safetensors``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config: Dict[str, object] = {"format": SAFETENSORS_FORMAT, "config": model.config.to_dict(),
                                 "num_classes": model.num_classes, "img_size": model.img_size,
                                 "in_channels": model.in_channels}
    if extra:
        config.update(extra)
    text = json.dumps(config, indent=2)  # fail on non-JSON metadata before touching any file
    weights = directory / SAFETENSORS_WEIGHTS
    with atomic_file(weights, verify=check_safetensors_complete) as tmp:
        save_file(state, str(tmp), metadata={"format": SAFETENSORS_FORMAT})
    write_text_atomic(directory / SAFETENSORS_CONFIG, text)
    return weights


def load_safetensors_model(directory: Union[str, Path]) -> TransUNet:
    """Rebuild a :class:`TransUNet` (eval mode) from :func:`export_safetensors` output; no pickle.

    Raises:
        FileNotFoundError: ``config.json`` or ``model.safetensors`` is missing.
        ValueError: the config is not valid JSON or does not describe a TransUNet, or the
            weights do not fit the architecture it describes (the mismatching tensors are named).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights = directory / SAFETENSORS_CONFIG, directory / SAFETENSORS_WEIGHTS
    for needed in (cfg_path, weights):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found; a safetensors export folder holds {SAFETENSORS_CONFIG} "
                                    f"and {SAFETENSORS_WEIGHTS} (kdseg_train.export.export_safetensors)")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        model = TransUNet(TransUNetConfig.from_dict(meta["config"]), int(meta["num_classes"]),
                          int(meta["img_size"]), int(meta["in_channels"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UsageError(f"{cfg_path} does not describe a TransUNet ({type(exc).__name__}: {exc}); "
                         "re-export the model with export_safetensors") from exc
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"{weights} is not a readable safetensors file ({exc}); re-export it") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise UsageError(f"{weights} does not fit the architecture in {cfg_path}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
    model.load_state_dict(state)
    return model.eval()
