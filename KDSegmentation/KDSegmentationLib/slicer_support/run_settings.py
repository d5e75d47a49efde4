"""Validate the module's settings (as stored in the Slicer parameter node) before a run starts.

The parameter node keeps plain strings so that scenes stay readable and portable:
the model id ("" = the registry's default), the device, and the structures as a
comma-separated list ("" = all). :func:`run_settings` turns them into checked values
or raises one :class:`KDSegError` saying what is wrong and how to fix it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..errors import DeviceError, KDSegError
from ..inference.onnx_engine import DEVICES
from ..inference.thread_limits import bounded_threads
from ..weights.download_timeouts import DEFAULT_READ_TIMEOUT_S, checked_read_timeout
from ..weights.model_registry import ModelCard, ModelRegistry

_log = logging.getLogger("KDSegmentationLib")

__all__ = ["RunSettings", "run_settings", "parse_structure_list", "join_structure_list", "gui_inference_threads",
           "MAX_BATCH_SIZE"]

MAX_BATCH_SIZE = 64


@dataclass(frozen=True)
class RunSettings:
    """Checked inputs of one segmentation run.

    Args:
        model_id: registry id of the model.
        device: "auto", "cpu" or "cuda".
        structures: canonical structure names to keep, or None for all.
        postprocess: largest component and hole filling per organ.
        batch_size: slices per ONNX Runtime call.
        threads: CPU threads for inference (at most the usable cores), or None for ONNX
            Runtime's default.
        download_timeout: seconds a weights download waits for data before retrying, or
            None for the default.
    """

    model_id: str
    device: str
    structures: Optional[Tuple[str, ...]]
    postprocess: bool
    batch_size: int
    threads: Optional[int] = None
    download_timeout: Optional[float] = None


def parse_structure_list(text: str) -> List[str]:
    """"liver, spleen ,," -> ["liver", "spleen"] (empty entries dropped, order kept, duplicates removed)."""
    names: List[str] = []
    for part in text.split(","):
        name = part.strip()
        if name and name not in names:
            names.append(name)
    return names


def join_structure_list(names: Sequence[str]) -> str:
    """Inverse of :func:`parse_structure_list` for names without commas."""
    for name in names:
        if "," in name:
            raise ValueError(f"structure names cannot contain commas: {name!r}")
    return ",".join(names)


def gui_inference_threads(cpu_count: Optional[int] = None) -> Optional[int]:
    """Inference threads that leave one core to Slicer's GUI (None when there is only one core)."""
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return cpus - 1 if cpus > 1 else None


def run_settings(registry: ModelRegistry, model_id: str = "", device: str = "auto", structures: str = "",
                 postprocess: bool = True, batch_size: int = 8, threads: Optional[int] = None,
                 download_timeout: Optional[float] = None) -> Tuple[RunSettings, ModelCard]:
    """Check raw settings against ``registry``; returns the settings and the chosen model's card.

    Args:
        registry: the loaded model registry.
        model_id: registry id, or "" for the registry's default model.
        device: "auto", "cpu" or "cuda".
        structures: comma-separated structure names (machine or display names), "" for all.
        postprocess, batch_size, threads, download_timeout: as in :class:`RunSettings`; a
            thread count above the usable cores is lowered to them (with a log warning).

    Raises:
        ModelNotFoundError: no model installed, unknown model id or unknown structure.
        DeviceError: unknown device.
        KDSegError: batch size, thread count or download timeout out of range.
    """
    card = registry.get(model_id or None)
    if device not in DEVICES:
        raise DeviceError(f"Unknown device {device!r}.", f"Choose one of: {', '.join(DEVICES)}.")
    if not 1 <= int(batch_size) <= MAX_BATCH_SIZE:
        raise KDSegError(f"Slices per batch must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}.",
                         "Use 8 on a CPU; larger batches help only on a GPU with enough memory.")
    if threads is not None and threads < 1:
        raise KDSegError(f"Inference threads must be at least 1, got {threads}.",
                         "Pass threads=None to let ONNX Runtime use every core.")
    threads, lowered = bounded_threads(threads)
    if lowered:
        _log.warning(lowered)
    if download_timeout is not None:
        try:
            download_timeout = checked_read_timeout(download_timeout)
        except ValueError as exc:
            raise KDSegError(f"Download timeout: {exc}.", f"Use {DEFAULT_READ_TIMEOUT_S:.0f} seconds unless the "
                             "network is very slow.") from None
    names = parse_structure_list(structures)
    kept: Optional[Tuple[str, ...]] = None
    if names:
        canonical = {card.label_by_name(name).name for name in names}  # raises for unknown names
        kept = tuple(label.name for label in card.foreground_labels() if label.name in canonical)
        if len(kept) == len(card.foreground_labels()):
            kept = None
    return RunSettings(card.id, device, kept, bool(postprocess), int(batch_size), threads, download_timeout), card
