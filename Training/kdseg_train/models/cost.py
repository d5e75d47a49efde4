"""Parameter and multiply-accumulate counts with ``torch.utils.flop_counter``.

Convention: ``FlopCounterMode`` counts 2 FLOPs per multiply-add of matrix products and
convolutions (element-wise ops, normalisations, softmax and interpolation are not
counted); we report MACs = those FLOPs / 2. TransUNet R50-ViT-B/16 at 224x224 is
29.2 G MACs (58.5 GFLOP in the counter's units). Papers print 24.7 G or 38.5 G "FLOPs"
for the same network with other conventions; compare like with like.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["MAC_CONVENTION", "ModelCost", "count_parameters", "count_macs", "measure_cost", "cost_report"]

MAC_CONVENTION = "1 MAC = 1 multiply-add = 2 FLOPs (torch.utils.flop_counter total / 2; matmuls and convs only)"


@dataclass(frozen=True)
class ModelCost:
    """Size and compute of one network for one square input.

    Attributes:
        name: registry name.
        parameters: trainable and frozen parameter count.
        macs: multiply-adds of one forward pass on one (in_channels, img_size, img_size) slice.
        img_size: the input side the MACs were counted at.
        onnx_bytes: size of the exported ONNX graph, if it was measured.
        description: the config's one-line description.
    """

    name: str
    parameters: int
    macs: int
    img_size: int
    onnx_bytes: Optional[int] = None
    description: str = ""

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data["gmacs"] = round(self.gmacs, 4)
        return data


def _cpu_attention_formulas() -> Dict[object, object]:
    """Count the fused CPU attention kernel like its CUDA siblings (torch's registry misses it).

    Without this the CPU ``scaled_dot_product_attention`` used when no taps are requested
    would count zero and the transformer would look 0.7 G MACs cheaper than it is.
    """
    from torch.utils.flop_counter import sdpa_flop_count

    def formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {} if op is None else {op: formula}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int = 224, in_channels: Optional[int] = None) -> int:
    """Multiply-adds of one eval-mode forward pass on a (1, in_channels, img_size, img_size) input."""
    if in_channels is None:
        in_channels = int(getattr(model, "in_channels", 1))
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_channels, img_size, img_size)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def measure_cost(name: str, model: nn.Module, img_size: int = 224, onnx_size: bool = False) -> ModelCost:
    """Parameters and MACs of ``model`` (and, with ``onnx_size``, the size of its ONNX export)."""
    onnx_bytes = None
    if onnx_size:
        from ..export import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            onnx_bytes = export_onnx(model, Path(tmp) / f"{name}.onnx", img_size, check=False).stat().st_size
    config = getattr(model, "config", None)
    return ModelCost(name, count_parameters(model), count_macs(model, img_size), img_size, onnx_bytes,
                     getattr(config, "description", ""))


def cost_report(names: Sequence[str], img_size: int = 224, num_classes: int = 9,
                onnx_size: bool = True) -> List[ModelCost]:
    """:class:`ModelCost` of each registered config, freshly built for ``img_size``."""
    from . import create_model

    costs = []
    for name in names:
        model = create_model(name, num_classes=num_classes, img_size=img_size).eval()
        costs.append(measure_cost(name, model, img_size, onnx_size))
        del model
    return costs
