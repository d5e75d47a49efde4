"""The segmentation pipeline: one function for the CLI, the Slicer module and evaluation.

CT (any orientation) -> canonical LPS axial slices -> HU window -> resize to the model
grid -> ONNX Runtime in batches -> logits resized back to the slice grid -> argmax
-> optional structure subset, largest component, hole filling -> label map with the
input's exact size, spacing, origin and direction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .engine import InferenceEngine
from .errors import InputImageError
from .image_io import check_ct_intensities, check_output_path, read_image, write_image_atomic
from .orientation import from_canonical, to_canonical
from .postprocessing import keep_structures, label_volumes_ml, largest_component_and_fill
from .preprocessing import window_to_unit
from .progress import CancelToken, ProgressCallback, Stage, report
from .registry import ModelCard, ModelRegistry, load_registry
from .slice_resampling import resize_channels, resize_slices
from .weights import resolve_weights

__all__ = ["SegmentationOptions", "SegmentationResult", "Segmenter", "segment_image", "segment_file"]

_log = logging.getLogger("KDSegmentationLib")


@dataclass
class SegmentationOptions:
    """User choices for one run.

    Args:
        structures: names of structures to keep (None: all).
        postprocess: keep each organ's largest connected component and fill holes.
        batch_size: slices per ONNX Runtime call.
    """

    structures: Optional[Sequence[str]] = None
    postprocess: bool = True
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class SegmentationResult:
    """Label map on the input grid, per-organ volumes (mL), stage timings (s)."""

    labels: sitk.Image
    volumes_ml: Dict[str, float]
    timings: Dict[str, float]
    model_id: str
    device: str
    warnings: List[str] = field(default_factory=list)


class Segmenter:
    """A model card and its loaded inference engine (reuse it across volumes)."""

    def __init__(self, card: ModelCard, engine: InferenceEngine) -> None:
        if card.input.channels != 1:
            raise InputImageError(f"Model {card.id} expects {card.input.channels}-channel input; CT has one.",
                                  "Choose a CT model.")
        self.card = card
        self.engine = engine

    @classmethod
    def from_registry(cls, model_id: Optional[str] = None, device: str = "auto", threads: Optional[int] = None,
                      registry: Union[None, str, Path, ModelRegistry] = None, allow_download: bool = True,
                      progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None
                      ) -> "Segmenter":
        """Look up ``model_id``, obtain verified weights and open an engine on ``device``."""
        if not isinstance(registry, ModelRegistry):
            registry = load_registry(registry)
        card = registry.get(model_id)
        path = resolve_weights(card, registry.directory, allow_download=allow_download, progress=progress,
                               cancel=cancel)
        report(progress, Stage.LOADING, 0, None, f"Loading {card.id} ({device})")
        engine = InferenceEngine(path, device=device, threads=threads, input_name=card.input.input_name,
                                 output_name=card.input.output_name)
        return cls(card, engine)


def _label_ids(card: ModelCard, structures: Optional[Sequence[str]]) -> List[int]:
    if not structures:
        return [label.index for label in card.foreground_labels()]
    return sorted({card.label_by_name(name).index for name in structures})


def segment_image(image: sitk.Image, segmenter: Segmenter, options: Optional[SegmentationOptions] = None,
                  progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None
                  ) -> SegmentationResult:
    """Segment a 3D CT image; the result has exactly ``image``'s geometry.

    Raises:
        InputImageError: not 3D single-channel, NaN/constant values.
        ModelNotFoundError: unknown structure name.
        CancelledError: ``cancel`` was triggered (nothing is returned).
    """
    options = options or SegmentationOptions()
    card = segmenter.card
    keep = _label_ids(card, options.structures)  # validate names before any work
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"Expected a 3D single-channel CT, got a {image.GetDimension()}D image with "
                              f"{image.GetNumberOfComponentsPerPixel()} component(s).", "Use a CT volume.")
    timings: Dict[str, float] = {}
    start = time.perf_counter()
    report(progress, Stage.PREPROCESSING, 0, None, "Reorienting and windowing")
    canonical = to_canonical(image)
    hu = sitk.GetArrayViewFromImage(canonical)
    warnings = check_ct_intensities(hu)
    unit = window_to_unit(hu, card.input.hu_window)  # (Z, Y, X) float32
    depth, height, width = unit.shape
    timings["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    labels = np.zeros(unit.shape, dtype=np.uint8)
    model_hw = (card.input.height, card.input.width)
    batch = options.batch_size
    for first in range(0, depth, batch):
        if cancel is not None:
            cancel.raise_if_cancelled()
        last = min(first + batch, depth)
        report(progress, Stage.INFERRING, first, depth, f"slice {first + 1}-{last} of {depth}")
        model_in = resize_slices(unit[first:last], model_hw)[:, None]
        logits = segmenter.engine.run(model_in)
        if logits.shape[1] != card.num_classes:
            raise InputImageError(f"Model {card.id} produced {logits.shape[1]} classes but its card lists "
                                  f"{card.num_classes}.", "The registry entry does not match the ONNX file.")
        # Interpolate logits, not the argmax, so boundaries are placed at full resolution.
        labels[first:last] = resize_channels(logits, (height, width)).argmax(axis=-1)
    report(progress, Stage.INFERRING, depth, depth, f"slice {depth} of {depth}")
    if cancel is not None:
        cancel.raise_if_cancelled()
    timings["infer"] = time.perf_counter() - start

    start = time.perf_counter()
    report(progress, Stage.POSTPROCESSING, 0, None, "Cleaning up label map")
    keep_structures(labels, keep)
    spacing_zyx = tuple(reversed(canonical.GetSpacing()))
    if options.postprocess:
        largest_component_and_fill(labels, spacing_zyx, keep)
    if cancel is not None:
        cancel.raise_if_cancelled()
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(canonical)
    label_image = from_canonical(label_image, image)
    names = {label.index: label.name for label in card.foreground_labels() if label.index in keep}
    volumes = label_volumes_ml(labels, canonical.GetSpacing(), names)
    timings["postprocess"] = time.perf_counter() - start
    report(progress, Stage.DONE, 1, 1, "Done")
    return SegmentationResult(label_image, volumes, timings, card.id, segmenter.engine.device, warnings)


def segment_file(input_path: Union[str, Path], output_path: Union[str, Path], segmenter: Segmenter,
                 options: Optional[SegmentationOptions] = None, series_uid: Optional[str] = None,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None
                 ) -> SegmentationResult:
    """Read ``input_path``, segment it and write the label map atomically to ``output_path``."""
    check_output_path(output_path)
    start = time.perf_counter()
    report(progress, Stage.READING, 0, None, f"Reading {input_path}")
    image = read_image(input_path, series_uid)
    read_time = time.perf_counter() - start
    result = segment_image(image, segmenter, options, progress, cancel)
    start = time.perf_counter()
    report(progress, Stage.WRITING, 0, None, f"Writing {output_path}")
    write_image_atomic(result.labels, output_path)
    result.timings = {"read": read_time, **result.timings, "write": time.perf_counter() - start}
    return result
