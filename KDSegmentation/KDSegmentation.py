"""KDSegmentation: one-click abdominal organ segmentation with a distilled lightweight TransUNet.

This file only wires Slicer objects to KDSegmentationLib, which does the work and is
tested without Slicer. Runs on Slicer 5.8 (Python 3.9) and later.
"""

import importlib
import logging
import time
from typing import Annotated, List, Optional

import numpy as np
import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from KDSegmentationLib.slicer_support.background_task import BackgroundTask, TaskFailed, TaskFinished
from KDSegmentationLib.slicer_support.dependencies import (
    describe_auto_device,
    install_requirements,
    nvidia_gpu_present,
    onnxruntime_build,
    onnxruntime_installed,
    onnxruntime_providers,
    preload_cuda_libraries,
)
from KDSegmentationLib.errors import KDSegError
from KDSegmentationLib.progress import ProgressEvent, Stage
from KDSegmentationLib.slicer_support.run_settings import (
    MAX_BATCH_SIZE,
    gui_inference_threads,
    join_structure_list,
    parse_structure_list,
    run_settings,
)
from KDSegmentationLib.weights.download_timeouts import DEFAULT_READ_TIMEOUT_S, MAX_READ_TIMEOUT_S
from KDSegmentationLib.slicer_support.status_text import format_bytes, format_result_status, progress_bar_state, volume_rows
from KDSegmentationMRML.result_nodes import apply_segmentation_result
from KDSegmentationMRML.volume_input import first_ct_volume, read_volume_input

# The timer drains the worker's queue; each tick also waits a few milliseconds with the
# GIL released so that the worker's Python code advances (see BackgroundTask.poll).
# benchmarks/poll_gil_wait.py: 4 ms every 20 ms blocks the GUI ~4-8 ms per tick (median)
# with the worker as fast as with the former 20 ms every 50 ms (which blocked 20-24 ms).
_POLL_INTERVAL_MS = 20
_POLL_YIELD_SECONDS = 0.004
# How long closing the module or Slicer waits for the worker to stop (it checks the
# cancel flag between batches).
_STOP_TIMEOUT_SECONDS = 5.0


class KDSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("KD Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["KDSegmentation developers"]
        self.parent.helpText = _(
            "Segments aorta, gallbladder, kidneys, liver, pancreas, spleen and stomach in an abdominal CT "
            "with a small TransUNet student distilled from a TransUNet teacher. Runs on CPU or GPU through "
            "ONNX Runtime; weights are downloaded once and verified by SHA-256. Read each model's intended "
            "use before relying on its output: research use only, not for clinical decisions."
        )
        self.parent.acknowledgementText = _(
            "TransUNet (Chen et al. 2021), SHViT single-head attention (Yun and Ro 2024). Sample CT from the "
            "TotalSegmentator project (Wasserthal et al., Radiology: AI 2023, CC BY 4.0)."
        )


@parameterNodeWrapper
class KDSegmentationParameterNode:
    """Module settings, saved with the scene.

    modelId: registry id ("" = the registry's default model).
    device: "auto", "cpu" or "cuda".
    structures: comma-separated structure names to keep ("" = all).
    livePreview: segment the slice under the Red view while the user scrolls.
    downloadTimeout: seconds a weights download waits for data before retrying.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelId: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    structures: str = ""
    postprocess: bool = True
    show3D: bool = True
    batchSize: Annotated[int, WithinRange(1, MAX_BATCH_SIZE)] = 8
    livePreview: bool = False
    downloadTimeout: Annotated[float, WithinRange(1.0, MAX_READ_TIMEOUT_S)] = DEFAULT_READ_TIMEOUT_S


class KDSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._taskNodes = None
        self._timer = qt.QTimer()
        self._timer.setInterval(_POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._pollTask)
        self._preview = None  # LivePreviewController, made in setup()
        self._previewTimer = qt.QTimer()
        self._previewTimer.setInterval(_POLL_INTERVAL_MS)
        self._previewTimer.connect("timeout()", self._pollPreview)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/KDSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = KDSegmentationLogic()
        self._preview = self.logic.livePreviewController(slicer.mrmlScene)
        self.ui.volumesTableWidget.setHorizontalHeaderLabels([_("Structure"), _("Volume (mL)")])
        self._fillDevices()
        self._fillModels()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.structuresListWidget.connect("itemChanged(QListWidgetItem*)", self.onStructuresChanged)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module unloaded (reload, or Slicer quitting): stop the worker and free the session."""
        self._timer.stop()
        self._previewTimer.stop()
        if self._preview is not None:
            self._preview.close()  # does not wait: a running inference finishes on its own
        if self._task is not None and not self._task.stop(_STOP_TIMEOUT_SECONDS):
            logging.warning("KDSegmentation: the worker did not stop within %.0f s", _STOP_TIMEOUT_SECONDS)
        self._task = None
        if self.logic is not None:
            self.logic.releaseSession()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._syncPreview)
        self._stopPreview()  # resumes on enter() when the toggle is still on

    def onSceneStartClose(self, caller, event) -> None:
        if self._task is not None:
            self._task.cancel()  # its nodes are about to disappear; the result is discarded
        self._stopPreview()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = first_ct_volume(slicer.mrmlScene)  # skips label maps loaded before the CT
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode: Optional[KDSegmentationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._syncPreview)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._syncPreview)
            self._syncManualWidgets()
            self._updateButtonState()
        self._syncPreview()

    # -- model, device and structure widgets (the wrapper cannot bind them) -------------
    def _fillDevices(self) -> None:
        self.ui.deviceComboBox.clear()
        try:
            providers = onnxruntime_providers()
        except Exception as exc:  # a broken install must not break the module panel
            logging.warning(f"KDSegmentation: cannot query ONNX Runtime: {exc}")
            providers = None
        auto = describe_auto_device(providers, nvidia_gpu_present())
        self.ui.deviceComboBox.addItem(_("Auto ({device})").format(device=auto), "auto")
        self.ui.deviceComboBox.addItem(_("GPU (CUDA)"), "cuda")
        self.ui.deviceComboBox.addItem(_("CPU"), "cpu")

    def _fillModels(self) -> None:
        wasBlocked = self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        try:
            for choice in self.logic.modelChoices():  # the registry's default first: preselected
                state = (_("downloaded") if choice.offline
                         else _("download {size}").format(size=format_bytes(choice.size_bytes)))
                self.ui.modelComboBox.addItem(f"{choice.text} ({state})", choice.model_id)
        except KDSegError as exc:
            self.ui.modelInfoLabel.text = str(exc)
        finally:
            self.ui.modelComboBox.blockSignals(wasBlocked)
        if self.ui.modelComboBox.count == 0 and not self.ui.modelInfoLabel.text:
            self.ui.modelInfoLabel.text = self.logic.noModelMessage()

    def _syncManualWidgets(self) -> None:
        index = self.ui.modelComboBox.findData(self._parameterNode.modelId)
        if self.ui.modelComboBox.count:
            self.ui.modelComboBox.setCurrentIndex(max(index, 0))
        self.ui.deviceComboBox.setCurrentIndex(max(self.ui.deviceComboBox.findData(self._parameterNode.device), 0))
        self.onModelChanged(self.ui.modelComboBox.currentIndex)

    def onModelChanged(self, index: int) -> None:
        modelId = self.ui.modelComboBox.itemData(index) if index >= 0 else None
        wasBlocked = self.ui.structuresListWidget.blockSignals(True)
        self.ui.structuresListWidget.clear()
        try:
            if not modelId:
                return
            card = self.logic.registry().get(modelId)
            if self._parameterNode and self._parameterNode.modelId != modelId:
                self._parameterNode.modelId = modelId
            self.ui.modelInfoLabel.text = self.logic.modelDescription(card)
            selected = set(parse_structure_list(self._parameterNode.structures if self._parameterNode else ""))
            for label in card.foreground_labels():
                item = qt.QListWidgetItem(label.display_name)
                item.setData(qt.Qt.UserRole, label.name)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Checked if not selected or label.name in selected else qt.Qt.Unchecked)
                self.ui.structuresListWidget.addItem(item)
        finally:
            self.ui.structuresListWidget.blockSignals(wasBlocked)
            self._updateButtonState()  # the list was refilled with its signals blocked

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onStructuresChanged(self, item) -> None:
        names = []
        for row in range(self.ui.structuresListWidget.count):
            listItem = self.ui.structuresListWidget.item(row)
            if listItem.checkState() == qt.Qt.Checked:
                names.append(listItem.data(qt.Qt.UserRole))
        if self._parameterNode:
            everything = len(names) == self.ui.structuresListWidget.count
            self._parameterNode.structures = "" if everything else join_structure_list(names)
        self._updateButtonState()

    def _updateButtonState(self, caller=None, event=None) -> None:
        if self._task is not None:
            self.ui.segmentButton.text = _("Cancel")
            self.ui.segmentButton.toolTip = _("Stop the running segmentation; nothing is created or changed.")
            self.ui.segmentButton.enabled = True
            return
        self.ui.segmentButton.text = _("Segment")
        p = self._parameterNode
        anyStructure = any(self.ui.structuresListWidget.item(row).checkState() == qt.Qt.Checked
                           for row in range(self.ui.structuresListWidget.count))
        if not self.ui.modelComboBox.count:
            reason = self.logic.noModelMessage()
        elif not (p and p.inputVolume):
            reason = _("Select an input CT volume.")
        elif not anyStructure:
            reason = _("Check at least one structure.")
        else:
            reason = ""
        self.ui.segmentButton.enabled = not reason
        self.ui.segmentButton.toolTip = reason or _("Segment the checked structures; click again to cancel.")

    # -- running ----------------------------------------------------------------------
    def onSegmentButton(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            self.ui.segmentButton.enabled = False
            return
        p = self._parameterNode
        try:
            settings = self.logic.runSettings(p.modelId, p.device, p.structures, p.postprocess, p.batchSize,
                                              threads=gui_inference_threads(), downloadTimeout=p.downloadTimeout)

            def showInstalling():
                self._showBusy(Stage.INSTALLING, _("ONNX Runtime"))

            if not self.logic.ensureOnnxRuntime(confirm=True, onInstall=showInstalling):
                self._endTask()
                self.ui.statusLabel.text = _("ONNX Runtime is not installed; nothing was segmented.")
                return
            self._taskNodes = (p.inputVolume, p.outputSegmentation, p.show3D)
            if p.livePreview:
                p.livePreview = False  # removes every preview node before the full result arrives
                self.ui.previewStatusLabel.text = _("Live preview was switched off for the full segmentation.")
            self._task = self.logic.startTask(p.inputVolume, settings)
        except Exception as exc:
            self._endTask()
            self._showError(exc)
            return
        self.ui.volumesTableWidget.setRowCount(0)
        self._showBusy(Stage.LOADING, _("Starting"))
        self._updateButtonState()
        self._timer.start()

    def _showBusy(self, stage: Stage, message: str) -> None:
        self.ui.progressBar.visible = True
        self._showProgress(ProgressEvent(stage, 0, None, message))
        slicer.app.processEvents()

    def _pollTask(self) -> None:
        if self._task is None:
            self._timer.stop()
            return
        for message in self._task.poll(yield_seconds=_POLL_YIELD_SECONDS):
            if isinstance(message, ProgressEvent):
                self._showProgress(message)
            elif isinstance(message, TaskFinished):
                self._finish(message.result)
            elif isinstance(message, TaskFailed):
                self._fail(message)

    def _showProgress(self, event: ProgressEvent) -> None:
        state = progress_bar_state(event)
        self.ui.progressBar.setRange(0, state.maximum)
        self.ui.progressBar.value = state.value
        self.ui.progressBar.format = state.text
        self.ui.statusLabel.text = state.text.replace(" (%p%)", "")

    def _endTask(self) -> None:
        self._task = None
        self._taskNodes = None
        self._timer.stop()
        self.ui.progressBar.visible = False
        self._fillModels()  # a model may have been downloaded
        if self._parameterNode:
            self._syncManualWidgets()
        self._updateButtonState()
        self._syncPreview()

    # -- live preview (KDSegmentationMRML.live_preview_controller does the work) --------
    def _syncPreview(self, caller=None, event=None) -> None:
        """Start, retarget or stop the live preview to match the parameter node; off while Segment runs."""
        p = self._parameterNode
        if self._preview is None:
            return
        if not (p and p.livePreview and p.inputVolume and self._task is None):
            if self._preview.active:
                self._stopPreview()
                self.ui.previewStatusLabel.text = ""
            return
        try:
            settings = self.logic.livePreviewSettings(p.modelId, p.device, p.structures)
            if self._preview.volume_node is not p.inputVolume:
                self._preview.start(p.inputVolume, settings)
            else:
                self._preview.update_settings(settings)
        except Exception as exc:
            self._stopPreview()
            self.ui.previewStatusLabel.text = _("Live preview is off: {error}").format(error=exc)
            p.livePreview = False
            return
        self.ui.previewStatusLabel.text = self._preview.status
        self._previewTimer.start()

    def _pollPreview(self) -> None:
        status = self._preview.poll(yield_seconds=_POLL_YIELD_SECONDS if self._preview.busy else 0.0)
        if status is not None:
            self.ui.previewStatusLabel.text = status
        if not self._preview.active:  # it stopped itself: an error, or the input went away
            self._previewTimer.stop()
            if self._parameterNode and self._parameterNode.livePreview:
                self._parameterNode.livePreview = False

    def _stopPreview(self) -> None:
        if self._preview is not None:
            self._preview.stop()
        self._previewTimer.stop()

    def _finish(self, result) -> None:
        inputVolume, outputSegmentation, show3D = self._taskNodes
        if not slicer.mrmlScene.IsNodePresent(inputVolume):
            self._endTask()
            self.ui.statusLabel.text = _("The input volume was removed; the result was discarded.")
            return
        if outputSegmentation is not None and not slicer.mrmlScene.IsNodePresent(outputSegmentation):
            outputSegmentation = None
        self._showBusy(Stage.POSTPROCESSING, _("Creating segments"))
        started = time.perf_counter()
        try:
            with slicer.util.WaitCursor():
                outputSegmentation = self.logic.applyResult(result, inputVolume, outputSegmentation, show3D)
        except Exception as exc:
            self._endTask()
            self._showError(exc)
            return
        status = self.logic.statusText(result, time.perf_counter() - started)
        self._endTask()
        if self._parameterNode:
            self._parameterNode.outputSegmentation = outputSegmentation
        self.ui.statusLabel.text = status
        rows = volume_rows(result.volumes_ml, result.display_names)
        self.ui.volumesTableWidget.setRowCount(len(rows))
        for row, (name, volume) in enumerate(rows):
            self.ui.volumesTableWidget.setItem(row, 0, qt.QTableWidgetItem(name))
            self.ui.volumesTableWidget.setItem(row, 1, qt.QTableWidgetItem(volume))
        self.ui.resultsCollapsibleButton.collapsed = False

    def _fail(self, message: TaskFailed) -> None:
        self._endTask()
        if message.cancelled:
            self.ui.statusLabel.text = _("Cancelled; no segmentation was created or changed.")
            return
        self._showError(message.error)

    def _showError(self, error: BaseException) -> None:
        """One dialog naming the problem and the fix (KDSegError), or the unexpected error."""
        if isinstance(error, KDSegError):
            text = str(error)
        else:
            logging.error("KDSegmentation failed", exc_info=error)
            text = _("Segmentation failed unexpectedly: {error}").format(error=repr(error))
        self.ui.statusLabel.text = _("Failed: {error}").format(error=text)
        slicer.util.errorDisplay(text, windowTitle=_("KD Segmentation"))


class KDSegmentationLogic(ScriptedLoadableModuleLogic):
    """Scriptable entry points; all computation is in KDSegmentationLib.

    From the Python console or a batch script::

        logic = slicer.util.getModuleLogic("KDSegmentation")  # or KDSegmentationLogic()
        seg = logic.process(volumeNode, device="cpu", structures=["liver", "spleen"])
    """

    def __init__(self) -> None:
        from KDSegmentationLib.slicer_support.segmenter_cache import SegmenterCache

        ScriptedLoadableModuleLogic.__init__(self)
        self._registry = None
        self._segmenters = SegmenterCache()  # one ONNX session while model/device/threads are unchanged

    def releaseSession(self) -> None:
        """Free the cached ONNX Runtime session (the next run opens a new one)."""
        self._segmenters.clear()

    def getParameterNode(self):
        return KDSegmentationParameterNode(super().getParameterNode())

    # -- models ---------------------------------------------------------------------
    def registry(self):
        from KDSegmentationLib.weights.model_registry import load_registry

        if self._registry is None:
            self._registry = load_registry()
        return self._registry

    def modelChoices(self):
        """The model list's entries (``slicer_support.model_choices``): every registered model, default first."""
        from KDSegmentationLib.slicer_support.model_choices import model_choices

        return model_choices(self.registry())

    def noModelMessage(self) -> str:
        from KDSegmentationLib.errors import ModelNotFoundError

        try:
            self.registry().get()
        except ModelNotFoundError as exc:
            return str(exc)
        return ""

    def modelDescription(self, card) -> str:
        from KDSegmentationLib.weights.resolution import cached_path, is_available_offline

        if is_available_offline(card, self.registry().directory):
            where = _("Weights are installed; works offline.")
        else:
            where = _("Weights ({size}) are downloaded and verified on first use. Offline: place {file} at {path}."
                      ).format(size=format_bytes(card.size_bytes), file=card.file, path=cached_path(card))
        return "\n".join([card.description, _("Intended use: {use}").format(use=card.intended_use), where])

    def livePreviewSettings(self, modelId: str = "", device: str = "auto", structures: str = ""):
        """Validated settings for the live preview; raises KDSegError naming what is missing and the fix.

        The preview never installs or downloads anything (no dialog may pop up while scrolling):
        the Segment button does both, with progress.
        """
        from KDSegmentationLib.weights.resolution import is_available_offline

        settings, card = run_settings(self.registry(), modelId, device, structures, threads=gui_inference_threads())
        if not onnxruntime_installed():
            raise KDSegError(_("Live preview needs ONNX Runtime."), _("Click Segment once to install it."))
        if not is_available_offline(card, self.registry().directory):
            raise KDSegError(_("Live preview needs the weights of {model} on this computer.").format(model=card.title),
                             _("Click Segment once to download them."))
        return settings

    def livePreviewController(self, scene):
        """The live preview for ``scene`` (Red view); it shares the Segment button's ONNX session."""
        from KDSegmentationMRML.live_preview_controller import LivePreviewController

        def openSegmenter(settings):  # on the preview's worker thread
            if settings.device != "cpu":
                preload_cuda_libraries()
            return self._segmenters.get(self.registry(), settings.model_id, settings.device, settings.threads)

        return LivePreviewController(scene, openSegmenter)

    def runSettings(self, modelId: str = "", device: str = "auto", structures: str = "", postprocess: bool = True,
                    batchSize: int = 8, threads: Optional[int] = None, downloadTimeout: Optional[float] = None):
        """Validated settings (raises KDSegError naming the problem)."""
        settings, _card = run_settings(self.registry(), modelId, device, structures, postprocess, batchSize,
                                       threads, downloadTimeout)
        return settings

    # -- dependencies -----------------------------------------------------------------
    def ensureOnnxRuntime(self, confirm: bool = True, onInstall=None) -> bool:
        """Install ONNX Runtime (the GPU build where an NVIDIA GPU is present) after the user agrees.

        Slicer's numpy and SimpleITK are pinned so that the install never replaces them.
        ``onInstall`` is called after the user agreed, before pip runs (e.g. to show a status).
        Returns False when the user declines.
        """
        if onnxruntime_installed():
            return True
        requirements = install_requirements()
        build = onnxruntime_build()
        question = _("KD Segmentation needs ONNX Runtime ({requirement}): a {size} download from PyPI.").format(
            requirement=build.requirement, size=build.download)
        if build.reason:
            question += "\n\n" + build.reason
        if confirm and not slicer.util.confirmOkCancelDisplay(question + "\n\n" + _("Install it now?"),
                                                              windowTitle=_("KD Segmentation")):
            return False
        if onInstall is not None:
            onInstall()
        with slicer.util.WaitCursor():
            slicer.util.pip_install(requirements)
        importlib.invalidate_caches()
        return onnxruntime_installed()

    # -- segmenting -------------------------------------------------------------------
    def _work(self, volumeInput, settings):
        from KDSegmentationLib.inference.pipeline import SegmentationOptions
        from KDSegmentationLib.slicer_support.module_segmentation import segment_volume_array

        registry = self.registry()

        def work(progress, cancel):
            if settings.device != "cpu":
                preload_cuda_libraries()
            segmenter = self._segmenters.get(registry, settings.model_id, settings.device, settings.threads,
                                             progress=progress, cancel=cancel, read_timeout=settings.download_timeout)
            options = SegmentationOptions(structures=settings.structures, postprocess=settings.postprocess,
                                          batch_size=settings.batch_size)
            return segment_volume_array(volumeInput.array_kji, volumeInput.ijk_to_ras, segmenter, options, progress,
                                        cancel)

        return work

    def startTask(self, inputVolume, settings):
        """Segment ``inputVolume`` on a worker thread; poll the returned task from a QTimer."""
        # Voxels and matrix are copied here, on the main thread: the worker never touches MRML/VTK.
        task = BackgroundTask(self._work(read_volume_input(inputVolume), settings))
        task.start()
        return task

    def computeSegmentation(self, inputVolume, settings):
        """Segment synchronously and return the Lib's VolumeSegmentation (no scene changes)."""
        from KDSegmentationLib.progress import CancelToken

        return self._work(read_volume_input(inputVolume), settings)(None, CancelToken())

    def process(self, inputVolume, outputSegmentation=None, model: Optional[str] = None, device: str = "auto",
                structures: Optional[List[str]] = None, postprocess: bool = True, batchSize: int = 8,
                show3D: bool = True):
        """Segment ``inputVolume`` synchronously (Python console, batch scripts, tests).

        Args:
            inputVolume: scalar volume node with a CT in Hounsfield units.
            outputSegmentation: segmentation node to overwrite, or None to create one.
            model: registry id, or None for the default model.
            device: "auto", "cpu" or "cuda".
            structures: structure names to keep (e.g. ["liver", "spleen"]), None for all.
            postprocess: keep each organ's largest component and fill holes.
            batchSize: slices per inference call.
            show3D: build closed surfaces so the organs show in 3D views.

        Returns:
            The output segmentation node.

        Raises:
            KDSegError: a problem the user can fix (the message says how).
        """
        if not onnxruntime_installed():
            raise KDSegError(_("ONNX Runtime is not installed."),
                             _("Run slicer.util.pip_install({requirements!r}) or click Segment in the module."
                               ).format(requirements=install_requirements()))
        if isinstance(structures, str):
            structures = parse_structure_list(structures)
        settings = self.runSettings(model or "", device, join_structure_list(structures or []), postprocess,
                                    batchSize)
        result = self.computeSegmentation(inputVolume, settings)
        started = time.perf_counter()
        outputSegmentation = self.applyResult(result, inputVolume, outputSegmentation, show3D)
        logging.info(self.statusText(result, time.perf_counter() - started))
        return outputSegmentation

    def applyResult(self, result, inputVolume, outputSegmentation=None, show3D: bool = True):
        """Put the result into ``outputSegmentation`` (created when None) and its volume table;
        main thread only. All or nothing: see KDSegmentationMRML.result_nodes."""
        nodes = apply_segmentation_result(slicer.mrmlScene, slicer.modules.segmentations.logic(), result,
                                          inputVolume, outputSegmentation, show_3d=show3D)
        return nodes.segmentation_node

    def statusText(self, result, applySeconds: Optional[float] = None) -> str:
        return format_result_status(result.timings, result.device, result.model_title, result.model_version,
                                    result.warnings, applySeconds)


class KDSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test on CPU: the bundled sample CT, SampleData's CTAAbdomenPanoramix, and the
    live preview of the sample in the Red view.

    The bundled sample CT is one of the two patients the bundled demonstration model was
    trained on, so it cannot show how well the model segments: there the module's result is
    compared voxel for voxel with what `kdseg segment` writes for the same file. The
    Panoramix CT is a patient the model never saw: there the organs the model card
    validates must have plausible adult volumes.

    Needs a trained model in the registry; without one it fails with the registry's
    "No trained model is installed" message.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_bundled_sample_ct()
        self.setUp()
        self.test_ct_abdomen_panoramix()
        self.setUp()
        self.test_live_preview_in_the_red_view()

    def test_live_preview_in_the_red_view(self):
        """The application's own Red view: overlay of the slice under view, hint when oblique, nothing left after."""
        from KDSegmentationLib.resources import sample_ct_path
        from KDSegmentationMRML.preview_overlay import preview_nodes

        self.delayDisplay("Live preview of the bundled sample CT in the Red view")
        volume = slicer.util.loadVolume(str(sample_ct_path()))
        logic = KDSegmentationLogic()
        self.assertTrue(logic.ensureOnnxRuntime(confirm=False))
        redLogic = slicer.app.layoutManager().sliceWidget("Red").sliceLogic()
        redNode = redLogic.GetSliceNode()
        redNode.SetOrientation("Axial")
        redLogic.FitSliceToBackground()
        preview = logic.livePreviewController(slicer.mrmlScene)
        try:
            preview.start(volume, logic.livePreviewSettings(device="cpu"))

            def settle():
                deadline = time.monotonic() + 60
                while preview.busy and time.monotonic() < deadline:
                    preview.poll(yield_seconds=0.05)
                    slicer.app.processEvents()
                preview.poll()

            settle()
            overlay = slicer.mrmlScene.GetNodeByID(redLogic.GetSliceCompositeNode().GetLabelVolumeID())
            self.assertIn(overlay, preview_nodes(slicer.mrmlScene))
            self.assertTrue(preview.status.startswith("Live preview: axial slice"))
            redNode.SetOrientation("Sagittal")
            settle()
            self.assertIn("preview needs an axial view", preview.status)
            self.assertEqual(preview_nodes(slicer.mrmlScene), [])
            redNode.SetOrientation("Axial")
            settle()
            self.assertTrue(preview_nodes(slicer.mrmlScene))
            preview.stop()
            self.assertEqual(preview_nodes(slicer.mrmlScene), [])
        finally:
            preview.close()
        self.delayDisplay("Live preview passed")

    def _segmentAndCheck(self, volume):
        """Segment ``volume`` through the module; check names, codes, voxels, geometry, hierarchy, table.

        Returns (segmentation node, {structure name: segment mask (K, J, I)}, model card).
        """
        from KDSegmentationLib.slicer_support.terminology import parse_terminology_entry
        from KDSegmentationMRML.result_nodes import VOLUME_TABLE_REFERENCE_ROLE
        from KDSegmentationMRML.volume_table import table_rows

        logic = KDSegmentationLogic()
        self.assertTrue(logic.ensureOnnxRuntime(confirm=False))
        settings = logic.runSettings(device="cpu")
        card = logic.registry().get(settings.model_id)
        result = logic.computeSegmentation(volume, settings)
        segmentationNode = logic.applyResult(result, volume)

        # Every structure the model segments exists, named, coded and equal to the Lib's labels.
        segmentation = segmentationNode.GetSegmentation()
        masks = {}
        for label in card.foreground_labels():
            segmentId = segmentation.GetSegmentIdBySegmentName(label.display_name)
            self.assertTrue(segmentId, f"segment {label.display_name} missing")
            segment = segmentation.GetSegment(segmentId)
            entry = vtk.mutable("")
            self.assertTrue(segment.GetTag(segment.GetTerminologyEntryTagName(), entry))
            fields = parse_terminology_entry(str(entry))
            self.assertEqual(fields["type"][1], label.terminology["type"]["code"])
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume)
            # The segment matches the Lib's label map voxel for voxel: no shift, flip or resampling.
            np.testing.assert_array_equal(mask > 0, result.labels_kji == label.index)
            masks[label.name] = mask > 0

        # The input is the reference geometry, and the node sits next to the input.
        self.assertEqual(segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole()),
                         volume)
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        self.assertEqual(
            segmentation.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(matrix, volume.GetImageData()))
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(segmentationNode)),
                         shNode.GetItemParent(shNode.GetItemByDataNode(volume)))
        self.assertIsNotNone(segmentationNode.GetDisplayNode())
        # The volume table lists the organs with the pipeline's volumes.
        table = segmentationNode.GetNodeReference(VOLUME_TABLE_REFERENCE_ROLE)
        self.assertEqual(table_rows(table), [(result.display_names[name], volume_ml)
                                             for name, volume_ml in result.volumes_ml.items()])
        return segmentationNode, masks, card

    def test_bundled_sample_ct(self):
        """The model's own training CT: the module must give exactly what `kdseg segment` writes."""
        import os

        from KDSegmentationLib.cli import main as kdseg
        from KDSegmentationLib.resources import sample_ct_path

        self.delayDisplay("Segmenting the bundled sample CT (the model's training CT) on CPU")
        volume = slicer.util.loadVolume(str(sample_ct_path()))
        _, masks, card = self._segmentAndCheck(volume)

        cliOutput = os.path.join(slicer.app.temporaryPath, "KDSegmentation-selftest-cli.nii.gz")
        self.assertEqual(kdseg(["segment", str(sample_ct_path()), "-o", cliOutput, "--device", "cpu",
                                "--no-progress"]), 0)
        cliLabels = slicer.util.loadVolume(cliOutput, {"labelmap": True, "show": False})
        cliMatrix, volumeMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        cliLabels.GetIJKToRASMatrix(cliMatrix)
        volume.GetIJKToRASMatrix(volumeMatrix)
        # Same file, same reader: the CLI's label map lies on the CT's grid, so voxels compare directly.
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(cliMatrix),
                                   slicer.util.arrayFromVTKMatrix(volumeMatrix), atol=1e-6)
        cliArray = slicer.util.arrayFromVolume(cliLabels)
        for name, mask in masks.items():
            np.testing.assert_array_equal(mask, cliArray == card.label_by_name(name).index, err_msg=name)
        self.assertGreater(sum(int(mask.sum()) for mask in masks.values()), 0)
        self.delayDisplay("Bundled sample CT equals `kdseg segment`")

    def test_ct_abdomen_panoramix(self):
        """A patient the model never saw: the organs its card validates have plausible volumes."""
        import SampleData

        from KDSegmentationLib.slicer_support.organ_volume_ranges import implausible_volumes

        self.delayDisplay("Downloading CTAAbdomenPanoramix")
        volume = SampleData.downloadSample("CTAAbdomenPanoramix")
        _, masks, card = self._segmentAndCheck(volume)
        voxelMl = float(np.prod(volume.GetSpacing())) / 1000.0
        volumes = {name: float(mask.sum()) * voxelMl for name, mask in masks.items()}
        validated = card.validated_structures()
        self.assertTrue(validated, f"model {card.id} has no validation metrics in its card")
        self.assertEqual(implausible_volumes(volumes, validated), [])
        self.delayDisplay("CTAAbdomenPanoramix passed")
