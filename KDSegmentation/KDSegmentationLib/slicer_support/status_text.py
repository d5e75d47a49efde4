"""What the Slicer module shows while and after segmenting: progress bar, status line, volume table.

Kept out of the module file so that the wording and arithmetic are tested without Slicer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..progress import ProgressEvent, Stage

__all__ = ["ProgressBarState", "progress_bar_state", "format_timings", "format_result_status", "volume_rows",
           "format_bytes"]

# The bar counts in thousandths so that fractions of small stages still move it.
_BAR_MAXIMUM = 1000


@dataclass(frozen=True)
class ProgressBarState:
    """How to draw a QProgressBar for one event.

    Args:
        maximum: 0 for a busy (indeterminate) bar, else ``_BAR_MAXIMUM``.
        value: position in ``[0, maximum]``.
        text: the bar's format string, e.g. "Inferring: slice 40 of 112 (36%)".
    """

    maximum: int
    value: int
    text: str


def format_bytes(count: int) -> str:
    """``123456789`` -> "117.7 MB" (binary units, one decimal)."""
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024.0 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024.0
    raise AssertionError("unreachable")


def _event_message(event: ProgressEvent) -> str:
    if event.stage == Stage.DOWNLOADING and event.total:
        return f"{format_bytes(event.current)} of {format_bytes(event.total)}"
    return event.message


def progress_bar_state(event: ProgressEvent) -> ProgressBarState:
    """The bar for ``event``: determinate when the stage knows its total, busy otherwise.

    Qt expands ``%p``, ``%v`` and ``%m`` in a bar's format, so percent signs are
    dropped from the message and only the ``%p%`` placeholder remains.
    """
    message = _event_message(event).replace("%", "")
    label = event.stage.label()
    text = f"{label}: {message}" if message else label
    fraction = event.fraction
    if fraction is None:
        return ProgressBarState(0, 0, text)
    return ProgressBarState(_BAR_MAXIMUM, int(round(_BAR_MAXIMUM * fraction)), text + " (%p%)")


def format_timings(timings: Mapping[str, float], device: str) -> str:
    """One status line, e.g. "Done in 4.2 s on CPU (preprocess 0.1 s, infer 3.8 s, postprocess 0.3 s)"."""
    total = sum(timings.values())
    parts = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in timings.items())
    device_text = {"cuda": "GPU (CUDA)", "cpu": "CPU"}.get(device, device)
    return f"Done in {total:.1f} s on {device_text}" + (f" ({parts})" if parts else "")


def format_result_status(timings: Mapping[str, float], device: str, model_title: str, model_version: str,
                         warnings: Sequence[str] = (), apply_seconds: Optional[float] = None) -> str:
    """The status line after a run: model, device, per-stage times and any warnings (one per line)."""
    timings = dict(timings)
    if apply_seconds is not None:
        timings["segments"] = apply_seconds
    lines = [f"{format_timings(timings, device)} with {model_title} v{model_version}."]
    lines.extend(f"Warning: {warning}" for warning in warnings)
    return "\n".join(lines)


def volume_rows(volumes_ml: Mapping[str, float], display_names: Optional[Dict[str, str]] = None
                ) -> List[Tuple[str, str]]:
    """(structure, "1234.5") rows for the results table, in the model's label order.

    Args:
        volumes_ml: structure name -> volume in mL, as in ``SegmentationResult.volumes_ml``.
        display_names: structure name -> name shown to users (default: the name itself).
    """
    display_names = display_names or {}
    return [(display_names.get(name, name), f"{volume:.1f}") for name, volume in volumes_ml.items()]
