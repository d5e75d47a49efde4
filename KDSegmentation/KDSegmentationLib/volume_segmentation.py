"""The Slicer module's logic path without Slicer: volume array + IJK-to-RAS in, labels + segment specs out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .pipeline import SegmentationOptions, SegmentationResult, Segmenter, segment_image
from .progress import CancelToken, ProgressCallback
from .terminology import terminology_entry
from .volume_geometry import ijk_to_ras_from_image, image_from_kji_array

__all__ = ["SegmentSpec", "VolumeSegmentation", "segment_volume_array", "format_timings", "format_volumes"]


@dataclass(frozen=True)
class SegmentSpec:
    """What the module needs to create one segment: label value, name, colour (0-1), terminology."""

    label_value: int
    name: str
    color: Tuple[float, float, float]
    terminology: Optional[str]


@dataclass
class VolumeSegmentation:
    """Labels (K, J, I) uint8 on the input volume's grid, with segment metadata."""

    labels_kji: np.ndarray
    ijk_to_ras: np.ndarray
    segments: List[SegmentSpec]
    volumes_ml: Dict[str, float]
    timings: Dict[str, float]
    device: str
    model_id: str
    warnings: List[str]


def segment_volume_array(array_kji: np.ndarray, ijk_to_ras: np.ndarray, segmenter: Segmenter,
                         options: Optional[SegmentationOptions] = None, progress: Optional[ProgressCallback] = None,
                         cancel: Optional[CancelToken] = None) -> VolumeSegmentation:
    """Segment a Slicer volume given as its array and IJK-to-RAS matrix (safe on a worker thread).

    Only structures kept by ``options.structures`` get a :class:`SegmentSpec`.
    """
    image = image_from_kji_array(array_kji, ijk_to_ras)
    result: SegmentationResult = segment_image(image, segmenter, options, progress, cancel)
    labels = sitk.GetArrayFromImage(result.labels)
    kept = set(result.volumes_ml)
    segments = [SegmentSpec(label.index, label.display_name, tuple(c / 255.0 for c in label.color),
                            terminology_entry(label))
                for label in segmenter.card.foreground_labels() if label.name in kept]
    return VolumeSegmentation(labels, ijk_to_ras_from_image(result.labels), segments, result.volumes_ml,
                              result.timings, result.device, result.model_id, result.warnings)


def format_timings(timings: Dict[str, float], device: str) -> str:
    """One status line, e.g. "Done in 4.2 s on CPU (preprocess 0.1 s, infer 3.8 s, postprocess 0.3 s)"."""
    total = sum(timings.values())
    parts = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in timings.items())
    return f"Done in {total:.1f} s on {device.upper()} ({parts})"


def format_volumes(volumes_ml: Dict[str, float]) -> List[Tuple[str, str]]:
    """(structure, "123.4") rows for the results table."""
    return [(name, f"{volume:.1f}") for name, volume in volumes_ml.items()]
