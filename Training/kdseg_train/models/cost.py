"""Parameter and multiply-accumulate counts with ``torch.utils.flop_counter``.

Convention: ``FlopCounterMode`` counts 2 FLOPs per multiply-add of matmuls and
convolutions (elementwise ops, norms and softmax are not counted); we report
MACs = FLOPs / 2. TransUNet R50-ViT-B/16 at 224x224 is 29.2 G MACs (58.5 GFLOPs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ModelCost", "count_parameters", "count_macs", "measure_cost"]


@dataclass(frozen=True)
class ModelCost:
    name: str
    parameters: int
    macs: int
    img_size: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int = 224, in_channels: int = 1) -> int:
    """Multiply-adds of one forward pass on a (1, in_channels, img_size, img_size) input."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, img_size, img_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def measure_cost(name: str, model: nn.Module, img_size: int = 224) -> ModelCost:
    return ModelCost(name, count_parameters(model), count_macs(model, img_size,
                                                                getattr(model, "in_channels", 1)), img_size)
