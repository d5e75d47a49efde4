"""The live preview in a scene: follow the Red view, segment on a worker, show the overlay.

Main thread only (MRML and VTK observers), except the work itself: every change of the
Red view's slice node (or of the input volume, its voxels or its parent transform)
becomes a :class:`ViewRequest` submitted to a :class:`LatestRequestWorker`, which
computes only the newest request and drops stale outcomes. The caller polls from a
timer (:meth:`LivePreviewController.poll`, like the module's Segment task); the outcome
is applied there, on the main thread: the overlay is updated, or removed with a hint
when the view shows no axial slice of the input. Nothing here waits for inference.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import vtk

import slicer

from KDSegmentationLib.errors import KDSegError
from KDSegmentationLib.slicer_support.latest_request import LatestRequestWorker, RequestFailed, RequestFinished
from KDSegmentationLib.slicer_support.live_preview import (
    LivePreview,
    PreviewInput,
    SegmenterFactory,
    ViewPreview,
    ViewRequest,
    same_view,
)
from KDSegmentationLib.slicer_support.run_settings import RunSettings

from .preview_overlay import DEFAULT_OPACITY, remove_slice_preview, show_slice_preview
from .slice_view import PREVIEW_VIEW, preview_input, view_composite_node, view_request, view_slice_node

__all__ = ["LivePreviewController"]

class LivePreviewController:
    """Live preview of one input volume in one slice view.

    Args:
        scene: the MRML scene.
        open_segmenter: opens the model session for given settings on the worker thread
            (e.g. ``registry_segmenter_factory(registry)``).
        layout_name: the view to follow ("Red": Slicer's axial view).
        opacity: label-layer opacity of the overlay.

    Call :meth:`start` to begin, :meth:`poll` from a timer while :attr:`busy`, :meth:`stop`
    to remove everything, :meth:`close` when the module goes away.
    """

    def __init__(self, scene, open_segmenter: SegmenterFactory, layout_name: str = PREVIEW_VIEW,
                 opacity: float = DEFAULT_OPACITY) -> None:
        self._scene = scene
        self._layout_name = layout_name
        self._opacity = opacity
        self._worker = LatestRequestWorker(LivePreview(open_segmenter), name="KDSegmentation live preview")
        self._observations: List[Tuple[object, int]] = []
        self._volume_node = None
        self._slice_node = None
        self._settings: Optional[RunSettings] = None
        self._input: Optional[PreviewInput] = None
        self._last_request: Optional[ViewRequest] = None
        self.status = ""
        # Closing the scene removes the nodes anyway; stopping first drops outcomes that would recreate them.
        self._scene_close_tag = scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._on_scene_close)

    @property
    def active(self) -> bool:
        """A volume is being previewed."""
        return self._volume_node is not None

    @property
    def volume_node(self):
        """The volume being previewed, or None."""
        return self._volume_node

    @property
    def busy(self) -> bool:
        """A preview is being computed or waits to be (poll until this is False)."""
        return self._worker.busy

    def start(self, volume_node, settings: RunSettings) -> None:
        """Preview ``volume_node`` in the view with ``settings``; a running preview is stopped first.

        Raises:
            InputImageError: the volume has no image data or is not a scalar CT volume.
            KDSegError: the scene has no such view.
        """
        self.stop()
        slice_node = view_slice_node(self._scene, self._layout_name)
        if slice_node is None:
            raise KDSegError(f"The scene has no {self._layout_name} slice view to preview in.",
                             "Choose a layout that shows the Red (axial) view.")
        self._input = preview_input(volume_node)  # copied here, on the main thread
        self._volume_node, self._slice_node, self._settings = volume_node, slice_node, settings
        self._observe(slice_node, vtk.vtkCommand.ModifiedEvent)
        for event in (vtk.vtkCommand.ModifiedEvent, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent,
                      slicer.vtkMRMLTransformableNode.TransformModifiedEvent):
            self._observe(volume_node, event)
        self.status = "Live preview: waiting for the first slice..."
        self.update()

    def update_settings(self, settings: RunSettings) -> None:
        """Use other settings (model, device, structures) from the next preview on."""
        if self.active and settings != self._settings:
            self._settings = settings
            self.update()

    def _on_scene_close(self, caller=None, event=None) -> None:
        self.stop()

    def _observe(self, node, event: int) -> None:
        self._observations.append((node, node.AddObserver(event, self._on_node_changed)))

    def _on_node_changed(self, caller=None, event=None) -> None:
        self.update()

    def update(self) -> None:
        """Submit what the view shows now, unless that is what was last submitted. Returns at once."""
        if not self.active:
            return
        if not self._scene.IsNodePresent(self._volume_node) or not self._scene.IsNodePresent(self._slice_node):
            self.stop()
            return
        try:
            self._input = preview_input(self._volume_node, self._input)
        except KDSegError as exc:  # e.g. the volume's image data was removed
            self.stop()
            self.status = str(exc)
            return
        request = view_request(self._settings, self._input, self._slice_node, self._volume_node)
        if same_view(request, self._last_request):
            return
        self._last_request = request
        self._worker.submit(request)

    def poll(self, yield_seconds: float = 0.0) -> Optional[str]:
        """Apply the newest finished preview, if any; returns the new status text, or None when nothing changed.

        Args:
            yield_seconds: as for :meth:`LatestRequestWorker.poll`.
        """
        outcome = self._worker.poll(yield_seconds)
        if outcome is None or outcome.request is None or not self.active:
            return None
        if isinstance(outcome, RequestFailed):
            error = outcome.error
            self.stop()
            self.status = (str(error) if isinstance(error, KDSegError)
                           else f"Live preview failed unexpectedly: {error!r}")
            return self.status
        assert isinstance(outcome, RequestFinished)
        self._apply(outcome.result)
        return self.status

    def _apply(self, result: ViewPreview) -> None:
        if result.preview is None:
            remove_slice_preview(self._scene)
            self.status = result.view.hint
            return
        composite = view_composite_node(self._slice_node)
        show_slice_preview(self._scene, result.preview, result.card, self._volume_node, composite, self._opacity)
        self.status = (f"Live preview: axial slice {result.preview.index + 1} from the feet, "
                       f"{result.card.title}; largest-component clean-up only in the full Segment result.")

    def stop(self) -> None:
        """Stop following the view, drop pending previews and remove every preview node."""
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []
        if self.active:
            self._worker.discard()
            self._worker.submit(None)  # the worker releases its prepared copy of the volume
        self._volume_node = self._slice_node = self._settings = self._input = self._last_request = None
        remove_slice_preview(self._scene)
        self.status = ""

    def close(self, timeout: Optional[float] = None) -> bool:
        """Stop and end the worker thread (module cleanup); True when the thread has ended."""
        self.stop()
        if self._scene_close_tag is not None:
            self._scene.RemoveObserver(self._scene_close_tag)
            self._scene_close_tag = None
        return self._worker.close(timeout)

