"""Atomic, resumable training checkpoints that never unpickle code.

A checkpoint is a folder ``<run>/checkpoints/step-00000200/`` holding

- ``weights.safetensors``: every trainable module (the network and the distillation
  projections) as plain tensors;
- ``state.pt``: optimiser, LR scheduler, AMP grad-scaler and the random-number states of
  every process (torch CPU/CUDA, NumPy, Python), written with ``torch.save`` and read
  back with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
  containers;
- ``meta.json``: step, world size, accumulated wall/CPU time (human readable).

The folder is written under a temporary name and renamed when complete, then
``checkpoints/latest.json`` is atomically replaced to point at it, so a process killed
at any instant (SIGKILL included) leaves the previous checkpoint intact and loadable.
Data order needs no saved state: batches are a pure function of (seed, step), see
:mod:`kdseg_train.batch_plan`.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from KDSegmentationLib.atomic_files import TEMPORARY_MARK, atomic_directory, write_text_atomic
from KDSegmentationLib.written_file_checks import check_safetensors_complete, check_zip_complete

__all__ = ["CheckpointError", "Checkpoint", "capture_rng_state", "restore_rng_state", "save_checkpoint",
           "load_checkpoint", "latest_checkpoint", "prune_checkpoints"]

WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
LATEST_FILE = "latest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the model being resumed."""


@dataclass
class Checkpoint:
    """What a resumed run needs, as loaded from disk."""

    path: Path
    step: int
    weights: Dict[str, torch.Tensor]
    optimizer: Dict[str, Any]
    scheduler: Dict[str, Any]
    scaler: Optional[Dict[str, Any]]
    rng_states: List[Dict[str, Any]]
    meta: Dict[str, Any] = field(default_factory=dict)


def capture_rng_state() -> Dict[str, Any]:
    """This process's random states as tensors and plain Python values (weights_only-safe)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2), fsync=True)


def save_checkpoint(directory: Path, step: int, module: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Optional[Any], rng_states: List[Dict[str, Any]],
                    meta: Optional[Dict[str, Any]] = None, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``directory`` and point ``latest.json`` at it.

    Args:
        directory: the run's ``checkpoints`` folder.
        step: optimiser steps completed.
        module: everything with trainable state (its ``state_dict`` goes to safetensors).
        optimizer / scheduler / scaler: their ``state_dict`` goes to ``state.pt``.
        rng_states: one :func:`capture_rng_state` per process (index = rank).
        meta: extra JSON-serialisable facts (world size, timing).
        keep: how many most recent checkpoints to keep (>= 1).

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    # An existing folder of the same step (e.g. a SIGTERM checkpoint at a step that was just
    # saved) is replaced as a whole; the files inside a fresh temporary folder need no
    # atomic writes of their own, the folder's rename publishes them together.
    with atomic_directory(final, fsync=True, verify=_check_checkpoint_written) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS_FILE))
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "rng_states": rng_states,
        }
        with open(tmp / STATE_FILE, "wb") as handle:
            torch.save(state, handle)
        (tmp / META_FILE).write_text(json.dumps(dict(meta or {}, step=step), indent=2), encoding="utf-8")
    _write_json_atomic(directory / LATEST_FILE, {"step": step, "checkpoint": final.name})
    prune_checkpoints(directory, keep)
    return final


def _check_checkpoint_written(folder: Path) -> None:
    """The atomic writer's verify step: every file whole (a full disk can cut one short silently)."""
    check_safetensors_complete(folder / WEIGHTS_FILE)
    check_zip_complete(folder / STATE_FILE)
    json.loads((folder / META_FILE).read_text(encoding="utf-8"))


def _complete(path: Path) -> bool:
    return all((path / name).is_file() for name in (WEIGHTS_FILE, STATE_FILE, META_FILE))


def latest_checkpoint(directory: Path) -> Optional[Path]:
    """The newest complete checkpoint folder in ``directory``, or None.

    ``latest.json`` is trusted when it names a complete folder; otherwise (written by an
    older run, or hand-edited) the highest complete ``step-*`` folder is used.
    """
    directory = Path(directory)
    pointer = directory / LATEST_FILE
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
            if _complete(directory / name):
                return directory / name
        except (ValueError, KeyError, TypeError):
            pass
    candidates = sorted(p for p in directory.glob("step-*") if p.is_dir() and _complete(p))
    return candidates[-1] if candidates else None


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints and any stale temporary folders."""
    directory = Path(directory)
    current = latest_checkpoint(directory)
    complete = sorted(p for p in directory.glob("step-*") if p.is_dir() and _complete(p))
    for old in complete[:-max(1, keep)]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in directory.glob(f".step-*{TEMPORARY_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder (no code is unpickled: safetensors + ``weights_only=True``).

    Raises:
        CheckpointError: the folder is incomplete or unreadable.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not _complete(path):
        raise CheckpointError(f"checkpoint {path} is incomplete (needs {WEIGHTS_FILE}, {STATE_FILE}, {META_FILE})")
    try:
        weights = load_file(str(path / WEIGHTS_FILE))
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except Exception as exc:  # corrupt file: say which and what to do
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); delete that folder to resume from "
                              "the previous checkpoint") from exc
    return Checkpoint(path, int(state["step"]), weights, state["optimizer"], state["scheduler"], state["scaler"],
                      list(state["rng_states"]), meta)
