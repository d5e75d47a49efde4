"""The Slicer module's logic path without Slicer: volume array + IJK-to-RAS in, labels + segment specs out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..imaging.slicer_geometry import ijk_to_ras_from_image, image_from_kji_array
from ..inference.pipeline import SegmentationOptions, SegmentationResult, Segmenter, segment_image
from ..progress import CancelToken, ProgressCallback
from ..weights.model_registry import ModelCard
from .terminology import terminology_entry

__all__ = ["SegmentSpec", "VolumeSegmentation", "segment_specs", "segment_volume_array"]


@dataclass(frozen=True)
class SegmentSpec:
    """What the module needs to create one segment: label value, name, colour (0-1), terminology."""

    label_value: int
    name: str
    color: Tuple[float, float, float]
    terminology: Optional[str]


@dataclass
class VolumeSegmentation:
    """Labels (K, J, I) uint8 on the input volume's grid, with segment metadata.

    ``volumes_ml`` and ``display_names`` are keyed by structure name (e.g. "kidney_left");
    ``segments`` lists the kept structures in label order.
    """

    labels_kji: np.ndarray
    ijk_to_ras: np.ndarray
    segments: List[SegmentSpec]
    volumes_ml: Dict[str, float]
    timings: Dict[str, float]
    device: str
    model_id: str
    model_title: str
    model_version: str
    warnings: List[str]
    display_names: Dict[str, str]


def segment_volume_array(array_kji: np.ndarray, ijk_to_ras: np.ndarray, segmenter: Segmenter,
                         options: Optional[SegmentationOptions] = None, progress: Optional[ProgressCallback] = None,
                         cancel: Optional[CancelToken] = None) -> VolumeSegmentation:
    """Segment a Slicer volume given as its array and IJK-to-RAS matrix (safe on a worker thread).

    Only structures kept by ``options.structures`` get a :class:`SegmentSpec`.
    """
    image = image_from_kji_array(array_kji, ijk_to_ras)
    result: SegmentationResult = segment_image(image, segmenter, options, progress, cancel)
    labels = sitk.GetArrayFromImage(result.labels)
    card = segmenter.card
    kept = set(result.volumes_ml)
    display_names = {label.name: label.display_name for label in card.foreground_labels() if label.name in kept}
    return VolumeSegmentation(labels, ijk_to_ras_from_image(result.labels), segment_specs(card, kept),
                              result.volumes_ml, result.timings, result.device, result.model_id, card.title,
                              card.version, list(result.warnings), display_names)


def segment_specs(card: ModelCard, names: Optional[Iterable[str]] = None) -> List[SegmentSpec]:
    """Segment name, colour (0-1) and terminology of each of ``card``'s labels in ``names``
    (None: all), in label order."""
    wanted = None if names is None else set(names)
    return [SegmentSpec(label.index, label.display_name, tuple(c / 255.0 for c in label.color),
                        terminology_entry(label))
            for label in card.foreground_labels() if wanted is None or label.name in wanted]
