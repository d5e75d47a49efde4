"""Atomic training checkpoints: model, optimiser, step and torch RNG state (dropout);
data order and augmentation derive from (seed, epoch, index) and need no state in one file.

Written with ``torch.save`` to a temporary file and renamed, so a crash mid-write
never replaces a good checkpoint; read with ``torch.load(weights_only=True)``, so
loading one never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    extra_modules: Optional[torch.nn.Module] = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": torch.tensor(step),
        "torch_rng": torch.get_rng_state(),
    }
    if extra_modules is not None:
        state["extra"] = extra_modules.state_dict()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra_modules: Optional[torch.nn.Module] = None) -> int:
    """Restore everything saved by :func:`save_checkpoint`; returns the step to continue from."""
    state: Dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if extra_modules is not None and "extra" in state:
        extra_modules.load_state_dict(state["extra"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])
