"""Re-estimate BatchNorm statistics on un-augmented training slices after training ("precise BN").

During training a BatchNorm layer keeps an exponential average of the statistics of the
*augmented* batches it saw (zoom, intensity shifts, noise, elastic...). At inference it
normalises clean CT with those statistics. Recomputing them once, in one pass over the
training slices without augmentation, averaging every batch's statistics with equal weight
(PyTorch's cumulative average, ``momentum=None``), makes them those of the inputs the
deployed network sees (Wu & Johnson, "Rethinking
"Batch" in BatchNorm", 2021). Weights are not touched; only ``running_mean``/``running_var``.
"""

from __future__ import annotations

from typing import Iterable, List

import torch
from torch import nn

__all__ = ["batchnorm_layers", "recalibrate_batchnorm"]


def batchnorm_layers(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` (SyncBatchNorm included), in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm's running statistics by the plain average of its batch statistics over ``images``.

    Args:
        model: the network; left in eval mode afterwards.
        images: batches (B, C, H, W) on the model's device, un-augmented training inputs.

    Returns:
        How many images the statistics were computed from (0 if the model has no BatchNorm,
        which is then left unchanged).

    Raises:
        ValueError: ``images`` yields no image while the model has BatchNorm layers.
    """
    layers = batchnorm_layers(model)
    if not layers:
        model.eval()
        return 0
    momenta = [layer.momentum for layer in layers]
    model.eval()  # dropout off: the statistics of the deterministic network
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over all batches, not an EMA
        layer.train()
    seen = 0
    try:
        for batch in images:
            model(batch)
            seen += int(batch.shape[0])
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.eval()
    if seen == 0:
        raise ValueError("BatchNorm recalibration got no training image; check data.train")
    return seen
