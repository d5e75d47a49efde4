"""The Slicer module's live preview without Slicer: a view snapshot in, the slice under view segmented out.

The GUI thread copies what it needs from MRML into a :class:`ViewRequest` (the input
volume's voxels and IJK-to-RAS, copied once per volume and shared by all requests;
the Red view's SliceToRAS; the volume's parent-to-world matrix) and submits it to a
:class:`LatestRequestWorker` whose work is a :class:`LivePreview`. On the worker
thread, :class:`LivePreview` keeps the model session warm and the volume prepared
between requests, finds the axial slice under view (:func:`axial_slice_under_view`)
and segments it (:class:`SlicePreviewer`). The GUI shows the returned
:class:`ViewPreview` as an overlay, or its hint when no axial slice is under view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ..inference.pipeline import Segmenter
from ..weights.model_registry import ModelCard, ModelRegistry
from .run_settings import RunSettings
from ..inference.slice_preview import PreviewVolume, SlicePreview, SlicePreviewer
from ..imaging.slice_under_view import SliceUnderView, ViewState, axial_slice_under_view

__all__ = ["PreviewInput", "ViewRequest", "ViewPreview", "LivePreview", "registry_segmenter_factory", "same_view"]


@dataclass(frozen=True)
class PreviewInput:
    """The input volume as the GUI thread copied it.

    Args:
        key: identifies the volume and its contents (e.g. node ID and image-data
            modification time); a new key makes the worker prepare the volume again.
        array_kji: (K, J, I) voxels in HU, a copy the GUI no longer touches.
        ijk_to_ras: the volume's 4x4 IJK-to-RAS matrix (without parent transforms).
    """

    key: str
    array_kji: np.ndarray
    ijk_to_ras: np.ndarray


@dataclass(frozen=True)
class ViewRequest:
    """What the Red view shows at one moment, with the settings to segment it.

    Args:
        settings: model, device, threads and structures (checked by :func:`run_settings`).
        volume: the input volume.
        slice_to_ras: the view's 4x4 SliceToRAS matrix.
        parent_to_world: 4x4 matrix of the volume's parent transforms (identity when it
            has none), or None when they are not linear.
    """

    settings: RunSettings
    volume: PreviewInput
    slice_to_ras: np.ndarray
    parent_to_world: Optional[np.ndarray]


def same_view(a: Optional[ViewRequest], b: Optional[ViewRequest]) -> bool:
    """Whether two requests ask for the same thing (slice node events fire far more often than the view moves).

    Matrices count as equal within 1e-9 (mm and direction cosines): anything smaller cannot move the view to
    another slice.
    """
    if a is None or b is None:
        return a is b
    if a.settings != b.settings or a.volume.key != b.volume.key:
        return False
    if (a.parent_to_world is None) != (b.parent_to_world is None):
        return False
    if a.parent_to_world is not None and not np.allclose(a.parent_to_world, b.parent_to_world, rtol=0, atol=1e-9):
        return False
    return bool(np.allclose(a.slice_to_ras, b.slice_to_ras, rtol=0, atol=1e-9))


@dataclass(frozen=True)
class ViewPreview:
    """The answer to a :class:`ViewRequest`.

    Args:
        view: which axial slice is under view, or why none is.
        preview: the segmented slice when ``view.state`` is AXIAL, else None.
        card: the model card (label names and colours for the overlay).
        timings: seconds per stage: "prepare" (volume reoriented, only when the input
            changed), "locate" (slice under view), and, when the slice was segmented rather
            than reused from the previous request, the preview's own stages.
    """

    view: SliceUnderView
    preview: Optional[SlicePreview]
    card: ModelCard
    timings: Dict[str, float]


SegmenterFactory = Callable[[RunSettings], Segmenter]


def registry_segmenter_factory(registry: ModelRegistry) -> SegmenterFactory:
    """Open the model of the settings from ``registry``, never downloading (the preview must not start a
    silent download: the Segment button downloads with progress)."""

    def open_segmenter(settings: RunSettings) -> Segmenter:
        return Segmenter.from_registry(settings.model_id, device=settings.device, threads=settings.threads,
                                       registry=registry, allow_download=False)

    return open_segmenter


class LivePreview:
    """The preview's work on the worker thread: ``preview(request) -> ViewPreview``.

    Args:
        open_segmenter: creates the model session for given settings (e.g.
            :func:`registry_segmenter_factory`); called again only when the model, device
            or thread count changes, so the session stays warm while the user scrolls.

    Not thread-safe: one worker thread calls it (see :class:`LatestRequestWorker`).
    """

    def __init__(self, open_segmenter: SegmenterFactory) -> None:
        self._open_segmenter = open_segmenter
        self._session_key: Optional[Tuple] = None
        self._previewer_key: Optional[Tuple] = None
        self._segmenter: Optional[Segmenter] = None
        self._previewer: Optional[SlicePreviewer] = None
        self._volume_key: Optional[str] = None
        self._volume: Optional[PreviewVolume] = None
        # The view often moves within one slice (sub-slice scrolling, panning, zooming): reuse that slice.
        self._last_preview: Optional[Tuple[Tuple, SlicePreview]] = None

    def _previewer_for(self, settings: RunSettings) -> SlicePreviewer:
        session_key = (settings.model_id, settings.device, settings.threads)
        if self._segmenter is None or session_key != self._session_key:
            self._segmenter, self._previewer = None, None  # free the old session before opening another
            self._segmenter = self._open_segmenter(settings)
            self._session_key = session_key
        if self._previewer is None or settings.structures != self._previewer_key:
            self._previewer = SlicePreviewer(self._segmenter, settings.structures)
            self._previewer_key = settings.structures
        return self._previewer

    def _volume_for(self, volume: PreviewInput) -> PreviewVolume:
        if self._volume is None or volume.key != self._volume_key:
            self._volume = None  # free the old volume before preparing another
            self._volume = PreviewVolume.from_kji_array(volume.array_kji, volume.ijk_to_ras)
            self._volume_key = volume.key
        return self._volume

    @property
    def segmenter(self) -> Optional[Segmenter]:
        """The open model session, or None before the first request."""
        return self._segmenter

    def __call__(self, request: Optional[ViewRequest]) -> Optional[ViewPreview]:
        """Segment the slice under view; ``None`` instead of a request releases the prepared volume
        (the preview was switched off: only the model session stays) and returns None."""
        if request is None:
            self._volume, self._volume_key, self._last_preview = None, None, None
            return None
        previewer = self._previewer_for(request.settings)
        timings = {"prepare": 0.0, "locate": 0.0}
        start = time.perf_counter()
        volume = self._volume_for(request.volume)
        located = time.perf_counter()
        timings["prepare"] = located - start
        if request.parent_to_world is None:
            view = SliceUnderView(ViewState.NONLINEAR_TRANSFORM)
        else:
            view = axial_slice_under_view(request.slice_to_ras,
                                          np.asarray(request.parent_to_world, dtype=float) @ volume.ijk_to_ras,
                                          volume.shape)
        timings["locate"] = time.perf_counter() - located
        preview = None
        if view.state is ViewState.AXIAL:
            key = (request.volume.key, request.settings, view.index)
            if self._last_preview is not None and self._last_preview[0] == key:
                preview = self._last_preview[1]
            else:
                preview = previewer.segment_slice(volume, view.index)
                self._last_preview = (key, preview)
                timings.update(preview.timings)
        return ViewPreview(view, preview, previewer.segmenter.card, timings)
