"""The teacher's logits on every training slice, computed once and kept on disk (fast knowledge distillation).

Shen & Xing 2022 ("A Fast Knowledge Distillation Framework for Visual Recognition")
store the teacher's soft targets once and reuse them in every epoch, transforming them
with the same augmentation as the image. Here the teacher runs once on the un-augmented
model input of every training slice (``GridSliceDataset.model_inputs``); the student's
augmentation then moves those logits with the image
(:class:`~kdseg_train.data.tiny_data_augmentation.TinyDataAugmentation`), so pixel KD
costs no teacher forward pass per step.

A cache lives in ``<folder>/<key>/`` with ``logits.npy`` (float16, (N, K, S, S)) and
``meta.json``; the key is the SHA-256 of the teacher's weights file together with the
data fingerprint (grid and every model input), so another teacher or other data gets
another folder, and a matching folder is reused by every student. ``meta.json`` holds the
SHA-256 of ``logits.npy``; a cache whose file does not match it is rebuilt. Folders are
written with the Lib's ``atomic_directory`` (complete or absent).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from KDSegmentationLib.atomic_files import atomic_directory

__all__ = ["LogitCacheError", "cache_key", "teacher_weights_file", "load_or_build_logit_cache", "file_sha256"]

_log = logging.getLogger("kdseg_train")
FORMAT_VERSION = 1


class LogitCacheError(RuntimeError):
    """A cache folder is unusable in a way rebuilding cannot fix (e.g. the teacher's weights are missing)."""


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_weights_file(teacher_dir: Path) -> Path:
    """The safetensors file a teacher run folder (its ``final/``) or export folder holds."""
    teacher_dir = Path(teacher_dir)
    final = teacher_dir / "final" if (teacher_dir / "final").is_dir() else teacher_dir
    path = final / "model.safetensors"
    if not path.is_file():
        raise LogitCacheError(f"teacher weights {path} do not exist; set distill.teacher to a finished teacher run")
    return path


def cache_key(teacher_sha256: str, data_fingerprint: str) -> str:
    """SHA-256 of (format version, teacher weights digest, data fingerprint)."""
    return hashlib.sha256(f"{FORMAT_VERSION}:{teacher_sha256}:{data_fingerprint}".encode()).hexdigest()


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, inputs: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    was_training = teacher.training
    teacher.eval()
    chunks = []
    try:
        for first in range(0, inputs.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(inputs[first:first + batch_size], dtype=np.float32)).to(device)
            chunks.append(teacher(x).float().cpu().numpy().astype(np.float16))
    finally:
        teacher.train(was_training)
    return np.concatenate(chunks)


def _read_valid(folder: Path, key: str) -> Optional[np.ndarray]:
    meta_path, logits_path = folder / "meta.json", folder / "logits.npy"
    if not (meta_path.is_file() and logits_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or meta.get("logits_sha256") != file_sha256(logits_path):
        _log.warning("logit cache %s does not verify (key or file digest differs): rebuilding it", folder)
        return None
    return np.load(logits_path, allow_pickle=False)


def load_or_build_logit_cache(teacher: nn.Module, teacher_dir: Path, model_inputs: np.ndarray, data_fingerprint: str,
                              folder: Path, batch_size: int = 8, device: torch.device = torch.device("cpu")
                              ) -> np.ndarray:
    """Cached teacher logits of ``model_inputs``, computed now if no verified cache exists.

    Args:
        teacher: the frozen teacher (loaded from ``teacher_dir``).
        teacher_dir: its run or export folder (the weights file's digest keys the cache).
        model_inputs: (N, 1, S, S) un-augmented model inputs.
        data_fingerprint: digest of ``model_inputs`` and the grid (``GridSliceDataset.fingerprint``).
        folder: parent folder of the cache folders.
        batch_size: slices per teacher forward pass.
        device: where the teacher runs.

    Returns:
        (N, K, S, S) float16 logits (read-only memory map is not used: the array is small).
    """
    weights = teacher_weights_file(teacher_dir)
    teacher_sha = file_sha256(weights)
    key = cache_key(teacher_sha, data_fingerprint)
    target = Path(folder) / key[:16]
    logits = _read_valid(target, key)
    if logits is not None:
        if logits.shape[0] != model_inputs.shape[0]:
            raise LogitCacheError(f"logit cache {target} holds {logits.shape[0]} slices for {model_inputs.shape[0]} "
                                  "training slices under the same key; delete the folder")
        _log.warning("teacher logits reused from %s", target)
        return logits
    _log.warning("computing the teacher's logits on %d training slices into %s", model_inputs.shape[0], target)
    logits = _teacher_logits(teacher, model_inputs, batch_size, device)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target) as tmp:  # replaces a folder that failed verification
        np.save(tmp / "logits.npy", logits, allow_pickle=False)
        meta = {"format_version": FORMAT_VERSION, "key": key, "teacher_weights": str(weights),
                "teacher_sha256": teacher_sha, "data_fingerprint": data_fingerprint, "shape": list(logits.shape),
                "dtype": str(logits.dtype), "logits_sha256": file_sha256(tmp / "logits.npy")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return logits
