"""The segmentation pipeline: one function for the CLI, the Slicer module and evaluation.

CT (any orientation) -> canonical LPS axial slices -> HU window -> resize to the model
grid -> ONNX Runtime in batches -> each class's logits resized back to the slice grid
-> argmax -> optional structure subset, largest component, hole filling -> label map
with the input's exact size, spacing, origin and direction.

Memory and time stay bounded for large CTs: the canonical slices are a numpy view of
the input's voxels (no reoriented copy), the label map is allocated once in the
input's orientation and written through the same view, slices are windowed and
resized batch by batch, and at full resolution only the uint8 label map exists,
never a (C, Z, Y, X) float volume. While the labels are written, each label's box is
recorded (:class:`LabelExtents`), so post-processing and volumes work inside the
organs' boxes instead of scanning the volume once per organ. Nothing here prints or keeps
global state, so the Slicer module can run it in a worker thread; progress goes to
a callback and cancellation is checked between batches.

The network calls run on worker threads (:class:`NetworkCalls`; ONNX Runtime releases
the GIL; on the CPU two one-thread calls at a time, :mod:`.run_layout`) while the calling
thread prepares the next batch and spreads the finished batches' labels in order: the
same arithmetic in another order, so the labels are identical to a run one step after
another. Progress events, cancellation and every label write stay on the calling thread;
the workers end before the function returns or raises.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import RegistryError
from ..imaging.image_files import check_output_path, check_volume_shape, read_image, write_image_atomic
from ..imaging.input_geometry import check_image_geometry, is_sheared, voxel_volume_mm3
from ..imaging.intensity_checks import check_ct_intensities
from ..imaging.orientation import CANONICAL_ORIENTATION, CanonicalAxes, orientation_code
from ..progress import CancelToken, ProgressCallback, Stage, report
from ..weights.model_registry import ModelCard, ModelRegistry, load_registry
from ..weights.resolution import resolve_weights
from .label_extents import LabelExtents
from .label_volumes import label_volumes_ml
from .model_grid import ModelGrid
from .network_calls import NetworkCalls
from .onnx_engine import InferenceEngine
from .postprocessing import keep_structures, largest_component_and_fill
from .preprocessing import window_to_unit
from .slice_resampling import argmax_resized, axis_weights, resize_slices
from .stage_clock import StageClock
from .run_layout import run_layout
from .thread_limits import usable_cores
from .thread_spinning import choose_spinning

__all__ = ["SegmentationOptions", "SegmentationResult", "Segmenter", "classify_slices", "model_grid",
           "network_overlap_helps", "segment_image", "segment_file", "structure_label_values"]

_log = logging.getLogger("KDSegmentationLib")



@dataclass
class SegmentationOptions:
    """User choices for one run.

    Args:
        structures: names of structures to keep (None: all the model segments).
        postprocess: keep each organ's largest connected component and fill its holes.
        batch_size: slices per ONNX Runtime call.
        overlap_network: run the network calls on worker threads (the segmenter's
            ``concurrent_runs`` at a time) while this thread prepares the next batch and
            spreads the finished ones' labels (True), or one step after another (False);
            None: overlap when the process may use more than one core
            (:func:`network_overlap_helps`). The labels are identical either way.
    """

    structures: Optional[Sequence[str]] = None
    postprocess: bool = True
    batch_size: int = 8
    overlap_network: Optional[bool] = None

    def __post_init__(self) -> None:
        if isinstance(self.structures, str):
            raise ValueError("structures must be a sequence of names, e.g. ['liver', 'spleen'], not a string")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class SegmentationResult:
    """Outcome of one run.

    Args:
        labels: uint8 label map with the input's size, spacing, origin and direction.
        volumes_ml: volume of each kept structure in millilitres (0.0 if not found).
        timings: wall seconds per stage, a partition of the run's wall time: "infer" is the
            wall time during which a network call was running; "preprocess" and
            "postprocess" count only their work while no network call was running
            (see :class:`~.stage_clock.StageClock`). `segment_file` adds "read" and "write".
        model_id: registry id of the model used.
        device: "cpu" or "cuda".
        warnings: doubts about the input (e.g. intensities that are not HU).
        busy: seconds each of "preprocess", "infer", "postprocess" worked, overlapping or
            not (equal to ``timings`` when nothing overlapped); "infer" sums the calls'
            durations, which exceeds its wall time when calls ran concurrently, while
            "postprocess" counts this thread's time only: the organ clean-up's worker threads
            (after the last batch) count as the wall time this thread waits for them.
        overlapped: whether the network calls ran on worker threads next to the other stages.
    """

    labels: sitk.Image
    volumes_ml: Dict[str, float]
    timings: Dict[str, float]
    model_id: str
    device: str
    warnings: List[str] = field(default_factory=list)
    busy: Dict[str, float] = field(default_factory=dict)
    overlapped: bool = False


class Segmenter:
    """A model card and its inference engine; create once, reuse for many volumes.

    Args:
        card: the model's registry entry (input spec, labels).
        engine: anything with ``run(batch (N, 1, H, W) float32) -> logits (N, C, H, W)`` and
            a ``device`` attribute, normally an :class:`InferenceEngine`.
        concurrent_runs: network calls :func:`segment_image` may have in progress at once
            (from several threads; :func:`~.run_layout.run_layout` decides it for
            :meth:`from_registry`'s CPU engines).

    Raises:
        RegistryError: the card asks for an input this version cannot produce, or its input size
            disagrees with the ONNX graph.
    """

    def __init__(self, card: ModelCard, engine: InferenceEngine, concurrent_runs: int = 1) -> None:
        if concurrent_runs < 1:
            raise ValueError(f"concurrent_runs must be >= 1, got {concurrent_runs}")
        spec = card.input
        if spec.channels != 1:
            raise RegistryError(f"Model {card.id} expects {spec.channels}-channel input; CT slices have one.",
                                "Choose a single-channel CT model (see `kdseg models`).")
        if spec.normalization != "window_to_unit":
            raise RegistryError(f"Model {card.id} uses normalization {spec.normalization!r}, which this "
                                "version does not implement.", "Update KDSegmentation or choose another model.")
        if spec.slice_orientation != CANONICAL_ORIENTATION:
            raise RegistryError(f"Model {card.id} expects {spec.slice_orientation} slices; this version feeds "
                                f"{CANONICAL_ORIENTATION}.", "Update KDSegmentation or choose another model.")
        graph_shape = getattr(engine, "input_shape", None)
        if graph_shape is not None:
            card_shape = (spec.channels, spec.height, spec.width)
            for name, want, got in zip(("channels", "height", "width"), card_shape, graph_shape):
                if got is not None and got != want:
                    raise RegistryError(
                        f"Model {card.id}: its card says input {name} {want}, but the ONNX file takes {got} "
                        f"(card input {card_shape}, graph {tuple('N' if d is None else d for d in graph_shape)}).",
                        "The registry entry does not belong to this file: re-export the model with "
                        "`kdseg-train export`, or fix the card's input section.")
        self.card = card
        self.engine = engine
        self.concurrent_runs = concurrent_runs

    @property
    def device(self) -> str:
        return self.engine.device

    @classmethod
    def from_registry(cls, model_id: Optional[str] = None, device: str = "auto", threads: Optional[int] = None,
                      registry: Union[None, str, Path, ModelRegistry] = None, allow_download: bool = True,
                      progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                      read_timeout: Optional[float] = None, spinning: str = "auto") -> "Segmenter":
        """Look up ``model_id`` (None: the registry's default), obtain verified weights, open an engine.

        Args:
            model_id: registry id, or None for the default model.
            device: "auto", "cpu" or "cuda".
            threads: CPU threads for inference (None: one per usable core): concurrent network
                calls, each on its own thread, plus the pool of the ONNX Runtime session they share
                (:func:`~.run_layout.run_layout`: two calls on a one-thread session on two cores).
            registry: a loaded registry, a registry JSON path, or None for the bundled one.
            allow_download: fetch weights that are neither bundled nor cached.
            progress, cancel: forwarded to the download.
            read_timeout: seconds to wait for each read of a download (None: its default).
            spinning: whether CPU inference threads spin during a run: "auto" (when the
                machine has the cores free, measured at session creation), "on" or "off".

        Raises:
            RegistryError / ModelNotFoundError: bad registry or unknown id.
            WeightsError: weights missing, not downloadable or failing verification.
            DeviceError: ``device="cuda"`` without a working GPU.
        """
        if not isinstance(registry, ModelRegistry):
            registry = load_registry(registry)
        card = registry.get(model_id)
        path = resolve_weights(card, registry.directory, allow_download=allow_download, progress=progress,
                               cancel=cancel, read_timeout=read_timeout)
        report(progress, Stage.LOADING, 0, None, f"Loading {card.id}")
        layout = run_layout(threads)
        # Next to the session's threads (its pool and one call's thread), segment_image's own thread and the other
        # calls' threads work: "auto" leaves them cores.
        neighbours = layout.concurrent_runs
        engine = InferenceEngine(path, device=device, threads=layout.session_threads,
                                 input_name=card.input.input_name, output_name=card.input.output_name,
                                 spinning=spinning,
                                 spinning_choice=functools.partial(choose_spinning, neighbour_threads=neighbours))
        # A GPU runs one call at a time anyway; its CPU threads mostly wait for it.
        concurrent_runs = layout.concurrent_runs if engine.device == "cpu" else 1
        _log.info("Model %s v%s on %s (%s); up to %d call(s) at a time sharing %d ONNX Runtime thread(s); %s",
                  card.id, card.version, engine.device, engine.device_reason, concurrent_runs, layout.session_threads,
                  engine.spinning_reason)
        return cls(card, engine, concurrent_runs)


def structure_label_values(card: ModelCard, structures: Optional[Sequence[str]]) -> List[int]:
    """Label values of ``structures`` (names or display names; None or empty: all foreground labels).

    Raises:
        ModelNotFoundError: a name the model does not segment (the message lists valid ones).
    """
    if not structures:
        return [label.index for label in card.foreground_labels()]
    return sorted({card.label_by_name(name).index for name in structures})


def network_overlap_helps() -> bool:
    """Whether :func:`segment_image` overlaps the network calls with its other stages by default.

    Measured in-process on 150 slices of 512 x 512 on 2 cores (labels identical; README, Speed):
    overlapped faster than one step after another; on one core, overlapped 1.39 s against
    1.37 s. So: overlap when the process may use more than one core.
    """
    return usable_cores() > 1


def _check_cancel(cancel: Optional[CancelToken]) -> None:
    if cancel is not None:
        cancel.raise_if_cancelled()


def _model_input(hu_slices: np.ndarray, card: ModelCard) -> np.ndarray:
    """(n, Y, X) HU -> (n, 1, H, W) float32 in the model's intensity range and grid.

    Equal, bit for bit, to ``resize_slices(window_to_unit(hu_slices, window), (H, W))``:
    the window is applied voxel by voxel, so the two source rows of each model row are
    picked first and only they are windowed (a quarter of the rows for 512 -> 128).
    """
    window, height = card.input.hu_window, card.input.height
    rows = hu_slices.shape[1]
    if rows == height:
        unit = window_to_unit(hu_slices, window)
    else:
        lo, hi, weight = axis_weights(rows, height)
        unit = window_to_unit(np.take(hu_slices, lo, axis=1), window)
        unit += (window_to_unit(np.take(hu_slices, hi, axis=1), window) - unit) * weight[:, None]
    return resize_slices(unit, (height, card.input.width))[:, None]


def model_grid(card: ModelCard) -> ModelGrid:
    """The grid a card's input spec defines (physical-size mode when it gives ``pixel_spacing_mm``)."""
    return ModelGrid(card.input.height, card.input.width, card.input.pixel_spacing_mm)


def _model_batch(hu_slices: np.ndarray, card: ModelCard, spacing_yx: Optional[Sequence[float]]) -> np.ndarray:
    """(n, Y, X) HU slices -> (n, 1, H, W) float32 network input of ``card``'s grid and intensity range.

    Raises:
        ValueError: a physical-size card and no ``spacing_yx``.
    """
    if card.input.pixel_spacing_mm is None:
        return _model_input(hu_slices, card)
    if spacing_yx is None:
        raise ValueError(f"model {card.id} takes slices at {card.input.pixel_spacing_mm} mm per pixel: pass the "
                         "slices' in-plane spacing_yx (mm) to classify_slices")
    # Window, blur and sampling as one banded operator per axis (hu_to_model): equal to training's
    # to_model(window_to_unit(...)) up to float rounding.
    return model_grid(card).hu_to_model(hu_slices, spacing_yx, card.input.hu_window)[:, None]


def _class_indices(logits: np.ndarray, card: ModelCard, slices_shape: Sequence[int],
                   spacing_yx: Optional[Sequence[float]], out: Optional[np.ndarray], extents: Optional[LabelExtents],
                   first_slice: int) -> np.ndarray:
    """(n, C, H, W) logits -> (n, Y, X) uint8 class indices on the slice grid (into ``out`` when given).

    Args:
        slices_shape: (n, Y, X) of the slices the logits belong to.

    Raises:
        RegistryError: the logits' shape does not match the card and the slice count.
    """
    count, height, width = slices_shape
    _check_logits(card, logits, count)
    # Class maps, not the small argmax, are interpolated so that boundaries are
    # placed at the input's resolution.
    if card.input.pixel_spacing_mm is None:
        return argmax_resized(logits, (height, width), out=out, extents=extents, first_slice=first_slice)
    return model_grid(card).argmax_to_slice(logits, (height, width), spacing_yx, out=out, extents=extents,
                                            first_slice=first_slice)


def _check_logits(card: ModelCard, logits: np.ndarray, count: int) -> None:
    expected = (count, card.num_classes, card.input.height, card.input.width)
    if tuple(logits.shape) != expected:
        raise RegistryError(f"Model {card.id} returned logits of shape {tuple(logits.shape)}; its registry "
                            f"entry implies {expected}.", "The registry entry does not match the ONNX file.")


def classify_slices(hu_slices: np.ndarray, segmenter: Segmenter, out: Optional[np.ndarray] = None,
                    timings: Optional[Dict[str, float]] = None, extents: Optional[LabelExtents] = None,
                    first_slice: int = 0, spacing_yx: Optional[Sequence[float]] = None) -> np.ndarray:
    """Class index of every pixel of canonical axial slices: one model call, no 3D post-processing.

    The per-batch arithmetic of :func:`segment_image` (which runs the same three steps,
    the network call on a worker thread), also used alone by the live slice preview so
    that a previewed slice goes through exactly the same arithmetic.

    Args:
        hu_slices: (n, Y, X) slices of the canonical (LPS) volume in HU, n >= 1.
        segmenter: model and engine.
        out: optional (n, Y, X) uint8 array to write the class indices into.
        timings: optional dict whose "preprocess", "infer" and "postprocess" entries
            (seconds) are increased by this call's stages.
        extents: optional boxes of the whole label map, grown to hold these slices' labels.
        first_slice: index of ``hu_slices[0]`` in the volume ``extents`` describes.
        spacing_yx: in-plane voxel size (row, column) in mm; required by physical-size
            models (card ``input.pixel_spacing_mm``), unused in resize mode.

    Returns:
        (n, Y, X) uint8 class indices (``out`` when given).

    Raises:
        RegistryError: the model's output does not match its card.
        ValueError: a physical-size model and no ``spacing_yx``.
    """
    card = segmenter.card
    start = time.perf_counter()
    batch = _model_batch(hu_slices, card, spacing_yx)
    preprocessed = time.perf_counter()
    logits = segmenter.engine.run(batch)
    inferred = time.perf_counter()
    labels = _class_indices(logits, card, hu_slices.shape, spacing_yx, out, extents, first_slice)
    if timings is not None:
        timings["preprocess"] = timings.get("preprocess", 0.0) + preprocessed - start
        timings["infer"] = timings.get("infer", 0.0) + inferred - preprocessed
        timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - inferred
    return labels


def segment_image(image: sitk.Image, segmenter: Segmenter, options: Optional[SegmentationOptions] = None,
                  progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None
                  ) -> SegmentationResult:
    """Segment a 3D CT image; the result has exactly ``image``'s geometry.

    Args:
        image: 3D single-component CT in Hounsfield units, any orientation and voxel type.
        segmenter: model and engine (see :meth:`Segmenter.from_registry`).
        options: structures, post-processing, batch size (default: all, on, 8).
        progress: receives PREPROCESSING, INFERRING ("slice n of N"), POSTPROCESSING, DONE events.
        cancel: checked between batches and organs.

    Returns:
        Label map, per-structure volumes, stage timings, model id, device and warnings.

    Raises:
        InputImageError: not 3D single-component, NaN/inf or constant values, unusable
            spacing or direction (see :func:`~..imaging.input_geometry.check_image_geometry`).
        ModelNotFoundError: unknown structure name.
        RegistryError: the model's output does not match its card.
        CancelledError: ``cancel`` was triggered (nothing is returned).
    """
    options = options or SegmentationOptions()
    card = segmenter.card
    keep = structure_label_values(card, options.structures)  # fail on bad names before any work
    check_volume_shape(image, "The input")
    geometry_warnings = check_image_geometry(image, "The input")
    for text in geometry_warnings:
        _log.warning(text)
    clock = StageClock()

    with clock.measure("preprocess"):
        report(progress, Stage.PREPROCESSING, 0, None, "Reorienting and checking intensities")
        axes = CanonicalAxes(image)
        voxels = sitk.GetArrayViewFromImage(image)  # the input's own (z, y, x) array, no copy
        hu = axes.view(voxels)  # canonical (Z, Y, X) slices, still no copy
        warnings = geometry_warnings + check_ct_intensities(hu)
        depth, height, width = hu.shape
        spacing_yx = (axes.spacing[1], axes.spacing[0])  # canonical (x, y, z) spacing -> (row, column)
        _log.info("Input %s %s, spacing %s mm -> %d axial slices of %dx%d, model grid %dx%d",
                  orientation_code(image), image.GetSize(), tuple(round(s, 3) for s in image.GetSpacing()),
                  depth, height, width, card.input.height, card.input.width)
        labels_in_input_order = np.zeros(voxels.shape, dtype=np.uint8)
        labels = axes.view(labels_in_input_order)
        extents = LabelExtents(labels.shape)

    overlap = options.overlap_network
    if overlap is None:
        overlap = network_overlap_helps()
    workers = segmenter.concurrent_runs if overlap else 0
    # The calls in progress and one more: the next batch is ready when a call ends. Each holds one
    # batch's input and logits (~5 MB at 8 x 128 px) and ONNX Runtime's buffers of one call.
    most_in_flight = workers + 1 if overlap else 1
    report(progress, Stage.INFERRING, 0, depth, f"slice 0 of {depth}")
    # Overlapped: batch k's network call (and k+1's, with two workers) runs on worker threads while this thread
    # prepares the next batch and spreads the oldest one's labels, at most most_in_flight calls submitted
    # and not spread (memory). Sequential: each batch is prepared, run and spread before the next.
    in_flight: Deque[Tuple[int, int, "Future[np.ndarray]"]] = deque()

    def spread_oldest() -> None:
        first, last, logits = in_flight.popleft()
        logits = logits.result()  # the worker's exception, if any, is raised here unchanged
        with clock.measure("postprocess"):
            _class_indices(logits, card, hu[first:last].shape, spacing_yx, labels[first:last], extents, first)
        report(progress, Stage.INFERRING, last, depth, f"slice {last} of {depth}")

    with NetworkCalls(segmenter.engine.run, workers, clock) as network:
        for first in range(0, depth, options.batch_size):
            _check_cancel(cancel)
            last = min(first + options.batch_size, depth)
            with clock.measure("preprocess"):
                batch = _model_batch(hu[first:last], card, spacing_yx)
            in_flight.append((first, last, network.submit(batch)))
            del batch
            if len(in_flight) >= most_in_flight:
                spread_oldest()
        while in_flight:
            _check_cancel(cancel)
            spread_oldest()
    del hu, voxels

    with clock.measure("postprocess"):
        names = {label.index: label.name for label in card.foreground_labels() if label.index in keep}
        keep_structures(labels, keep, extents)
        if options.postprocess:
            def before_organ(done: int, value: int) -> None:
                _check_cancel(cancel)
                report(progress, Stage.POSTPROCESSING, done, len(keep), f"largest component of {names[value]}")

            # Organs examined on every core (the network is done), changes written in label order: the same map.
            largest_component_and_fill(labels, keep, extents, workers=min(usable_cores(), 4),
                                       before_each=before_organ)
            report(progress, Stage.POSTPROCESSING, len(keep), len(keep), "post-processing done")
        _check_cancel(cancel)
        # Only the product of the spacings counts; a sheared grid's voxels are smaller than it.
        volume_spacing = (voxel_volume_mm3(image),) if is_sheared(image) else axes.spacing
        volumes = label_volumes_ml(labels, volume_spacing, names, extents)
        del labels
        label_image = sitk.GetImageFromArray(labels_in_input_order)
        del labels_in_input_order
        label_image.CopyInformation(image)  # written through the canonical view: already the input's grid
    timings = clock.exposed()
    report(progress, Stage.DONE, 1, 1, "Done")
    return SegmentationResult(label_image, volumes, timings, card.id, segmenter.engine.device, warnings,
                              busy=clock.busy(), overlapped=overlap)


def segment_file(input_path: Union[str, Path], output_path: Union[str, Path], segmenter: Segmenter,
                 options: Optional[SegmentationOptions] = None, series_uid: Optional[str] = None,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None
                 ) -> SegmentationResult:
    """Read ``input_path``, segment it and write the label map atomically to ``output_path``.

    Args:
        input_path: CT file or DICOM series folder (see :func:`read_image`).
        output_path: label map to write (.nii.gz, .nii, .nrrd, .mha); checked before any work.
        segmenter, options, progress, cancel: as for :func:`segment_image`.
        series_uid: which DICOM series when the folder holds several.

    Returns:
        The :class:`SegmentationResult`, with "read" and "write" timings added.

    Raises:
        InputImageError, OutputError, CancelledError, ...: as for :func:`read_image`,
            :func:`segment_image` and :func:`write_image_atomic`; no output file is left.
    """
    check_output_path(output_path)
    start = time.perf_counter()
    report(progress, Stage.READING, 0, None, f"Reading {input_path}")
    image = read_image(input_path, series_uid)
    read_time = time.perf_counter() - start
    result = segment_image(image, segmenter, options, progress, cancel)
    del image
    start = time.perf_counter()
    report(progress, Stage.WRITING, 0, None, f"Writing {output_path}")
    write_image_atomic(result.labels, output_path)
    result.timings = {"read": read_time, **result.timings, "write": time.perf_counter() - start}
    report(progress, Stage.DONE, 1, 1, f"Wrote {output_path}")
    return result
