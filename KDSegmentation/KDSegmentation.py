"""KDSegmentation: one-click abdominal organ segmentation with a distilled lightweight TransUNet.

This file only wires Slicer objects to KDSegmentationLib, which does the work and is
tested without Slicer. Runs on Slicer 5.8 (Python 3.9) and later.
"""

import logging
from typing import Annotated, List, Optional

import numpy as np
import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from KDSegmentationLib.background_task import BackgroundTask, TaskFailed, TaskFinished
from KDSegmentationLib.dependencies import onnxruntime_installed, onnxruntime_requirement
from KDSegmentationLib.errors import KDSegError
from KDSegmentationLib.progress import ProgressEvent, Stage

_DEVICES = (("auto", "Auto"), ("cuda", "GPU (CUDA)"), ("cpu", "CPU"))


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
            "use: the bundled demonstration weights are not for clinical use."
        )
        self.parent.acknowledgementText = _(
            "TransUNet (Chen et al. 2021), SHViT single-head attention (Yun and Ro 2024). Sample CT from the "
            "TotalSegmentator project (Wasserthal et al., Radiology: AI 2023, CC BY 4.0)."
        )


@parameterNodeWrapper
class KDSegmentationParameterNode:
    """Module settings, saved with the scene.

    modelId: registry id ("" = the registry's default model).
    device: "auto", "cuda" or "cpu".
    structures: comma-separated structure names to keep ("" = all).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelId: str = ""
    device: str = "auto"
    structures: str = ""
    postprocess: bool = True
    batchSize: Annotated[int, WithinRange(1, 64)] = 8


class KDSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._taskInput = None
        self._taskOutput = None
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._pollTask)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/KDSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = KDSegmentationLogic()
        self.ui.volumesTableWidget.setHorizontalHeaderLabels([_("Structure"), _("Volume (mL)")])
        for value, text in _DEVICES:
            self.ui.deviceComboBox.addItem(text, value)
        self._fillModels()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.structuresListWidget.connect("itemChanged(QListWidgetItem*)", self.onStructuresChanged)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode: Optional[KDSegmentationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)
            self._syncManualWidgets()
            self._updateButtonState()

    # -- models, device, structures (widgets the wrapper cannot bind) -------------------
    def _fillModels(self) -> None:
        self.ui.modelComboBox.clear()
        try:
            cards = self.logic.registry().models.values()
        except KDSegError as exc:
            self.ui.modelInfoLabel.text = str(exc)
            return
        for card in cards:
            state = _("downloaded") if self.logic.isAvailableOffline(card) else _("needs download")
            self.ui.modelComboBox.addItem(f"{card.title} v{card.version} ({state})", card.id)
        if not cards:
            self.ui.modelInfoLabel.text = _("No trained model is installed. See the extension's documentation "
                                            "to train and export one.")

    def _syncManualWidgets(self) -> None:
        index = self.ui.modelComboBox.findData(self._parameterNode.modelId)
        self.ui.modelComboBox.setCurrentIndex(max(index, 0))
        self.ui.deviceComboBox.setCurrentIndex(max(self.ui.deviceComboBox.findData(self._parameterNode.device), 0))
        self.onModelChanged(self.ui.modelComboBox.currentIndex)

    def onModelChanged(self, index: int) -> None:
        modelId = self.ui.modelComboBox.itemData(index) if index >= 0 else None
        self.ui.structuresListWidget.clear()
        if not modelId:
            return
        card = self.logic.registry().get(modelId)
        if self._parameterNode and self._parameterNode.modelId != modelId:
            self._parameterNode.modelId = modelId
        self.ui.modelInfoLabel.text = f"{card.description}\n{_('Intended use')}: {card.intended_use}"
        selected = set(s for s in (self._parameterNode.structures.split(",") if self._parameterNode else []) if s)
        for label in card.foreground_labels():
            item = qt.QListWidgetItem(label.display_name)
            item.setData(qt.Qt.UserRole, label.name)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if not selected or label.name in selected else qt.Qt.Unchecked)
            self.ui.structuresListWidget.addItem(item)

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onStructuresChanged(self, item) -> None:
        names = []
        for row in range(self.ui.structuresListWidget.count):
            it = self.ui.structuresListWidget.item(row)
            if it.checkState() == qt.Qt.Checked:
                names.append(it.data(qt.Qt.UserRole))
        if self._parameterNode:
            everything = len(names) == self.ui.structuresListWidget.count
            self._parameterNode.structures = "" if everything else ",".join(names)

    def _updateButtonState(self, caller=None, event=None) -> None:
        if self._task is not None:
            self.ui.segmentButton.text = _("Cancel")
            self.ui.segmentButton.enabled = True
            return
        self.ui.segmentButton.text = _("Segment")
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self.ui.modelComboBox.count)
        self.ui.segmentButton.enabled = ready

    # -- running ----------------------------------------------------------------------
    def onSegmentButton(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        if not self.logic.ensureOnnxRuntime():
            return
        p = self._parameterNode
        if not p.outputSegmentation:
            p.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", p.inputVolume.GetName() + " organs")
        self._taskInput, self._taskOutput = p.inputVolume, p.outputSegmentation
        structures = [s for s in p.structures.split(",") if s] or None
        self._task = self.logic.startTask(p.inputVolume, p.modelId or None, p.device, structures, p.postprocess,
                                          p.batchSize)
        self.ui.volumesTableWidget.setRowCount(0)
        self.ui.progressBar.visible = True
        self.ui.progressBar.setRange(0, 0)
        self.ui.statusLabel.text = _("Starting...")
        self._updateButtonState()
        self._timer.start()

    def _pollTask(self) -> None:
        if self._task is None:
            self._timer.stop()
            return
        for message in self._task.poll():
            if isinstance(message, ProgressEvent):
                self._showProgress(message)
            elif isinstance(message, TaskFinished):
                self._finish(message.result)
            elif isinstance(message, TaskFailed):
                self._fail(message)

    def _showProgress(self, event: ProgressEvent) -> None:
        if event.total:
            self.ui.progressBar.setRange(0, 1000)
            self.ui.progressBar.value = int(1000 * (event.fraction or 0.0))
        else:
            self.ui.progressBar.setRange(0, 0)
        self.ui.statusLabel.text = f"{event.stage.label()}: {event.message}"

    def _endTask(self) -> None:
        self._task = None
        self._timer.stop()
        self.ui.progressBar.visible = False
        self._fillModels()
        self._syncManualWidgets()
        self._updateButtonState()

    def _finish(self, result) -> None:
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to create the segmentation."), waitCursor=True):
                self.logic.applyResult(result, self._taskInput, self._taskOutput)
            self.ui.statusLabel.text = self.logic.statusText(result)
            rows = self.logic.volumeRows(result)
            self.ui.volumesTableWidget.setRowCount(len(rows))
            for row, (name, volume) in enumerate(rows):
                self.ui.volumesTableWidget.setItem(row, 0, qt.QTableWidgetItem(name))
                self.ui.volumesTableWidget.setItem(row, 1, qt.QTableWidgetItem(volume))
        finally:
            self._endTask()

    def _fail(self, message: TaskFailed) -> None:
        self._endTask()
        if message.cancelled:
            self.ui.statusLabel.text = _("Cancelled; no segmentation was created.")
            return
        self.ui.statusLabel.text = _("Failed: ") + str(message.error)
        if isinstance(message.error, KDSegError):
            slicer.util.errorDisplay(str(message.error))
        else:
            logging.error("KDSegmentation failed", exc_info=message.error)
            slicer.util.errorDisplay(_("Segmentation failed unexpectedly: ") + repr(message.error))


class KDSegmentationLogic(ScriptedLoadableModuleLogic):
    """Scriptable entry points; all computation is in KDSegmentationLib."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._registry = None

    def getParameterNode(self):
        return KDSegmentationParameterNode(super().getParameterNode())

    def registry(self):
        from KDSegmentationLib.registry import load_registry

        if self._registry is None:
            self._registry = load_registry()
        return self._registry

    def isAvailableOffline(self, card) -> bool:
        from KDSegmentationLib.weights import is_available_offline

        return is_available_offline(card, self.registry().directory)

    def ensureOnnxRuntime(self, confirm: bool = True) -> bool:
        """Install ONNX Runtime (GPU build when an NVIDIA GPU is present) after the user agrees."""
        if onnxruntime_installed():
            return True
        requirement = onnxruntime_requirement()
        if confirm and not slicer.util.confirmOkCancelDisplay(
                _("KD Segmentation needs ONNX Runtime ({requirement}). Install it now?").format(requirement=requirement)):
            return False
        with slicer.util.WaitCursor():
            slicer.util.pip_install(requirement)
        return onnxruntime_installed()

    def _work(self, array, ijkToRAS, modelId, device, structures, postprocess, batchSize):
        from KDSegmentationLib.pipeline import SegmentationOptions, Segmenter
        from KDSegmentationLib.volume_segmentation import segment_volume_array

        registry = self.registry()

        def work(progress, cancel):
            segmenter = Segmenter.from_registry(modelId, device=device, registry=registry, progress=progress,
                                                cancel=cancel)
            options = SegmentationOptions(structures=structures, postprocess=postprocess, batch_size=batchSize)
            return segment_volume_array(array, ijkToRAS, segmenter, options, progress, cancel)

        return work

    def _volumeInputs(self, inputVolume):
        if inputVolume is None or inputVolume.GetImageData() is None:
            raise ValueError(_("Select an input volume that has image data."))
        # Copy on the main thread: the worker must not touch MRML/VTK memory.
        array = np.array(slicer.util.arrayFromVolume(inputVolume), copy=True)
        matrix = vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(matrix)
        return array, slicer.util.arrayFromVTKMatrix(matrix)

    def startTask(self, inputVolume, modelId=None, device="auto", structures=None, postprocess=True, batchSize=8):
        """Start segmenting ``inputVolume`` on a worker thread; poll the returned task from a QTimer."""
        array, ijkToRAS = self._volumeInputs(inputVolume)
        task = BackgroundTask(self._work(array, ijkToRAS, modelId, device, structures, postprocess, batchSize))
        task.start()
        return task

    def process(self, inputVolume, outputSegmentation=None, model: Optional[str] = None, device: str = "auto",
                structures: Optional[List[str]] = None, postprocess: bool = True, batchSize: int = 8):
        """Segment ``inputVolume`` synchronously (Python console, batch scripts, tests).

        Returns the output segmentation node (created when ``outputSegmentation`` is None).
        """
        array, ijkToRAS = self._volumeInputs(inputVolume)
        from KDSegmentationLib.progress import CancelToken

        result = self._work(array, ijkToRAS, model, device, structures, postprocess, batchSize)(None, CancelToken())
        if outputSegmentation is None:
            outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                    inputVolume.GetName() + " organs")
        self.applyResult(result, inputVolume, outputSegmentation)
        logging.info(self.statusText(result))
        return outputSegmentation

    def applyResult(self, result, inputVolume, outputSegmentation) -> None:
        """Replace the segments of ``outputSegmentation`` with the result (main thread only)."""
        labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "KDSegmentation temporary")
        try:
            slicer.util.updateVolumeFromArray(labelNode, result.labels_kji.astype(np.uint8))
            labelNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(result.ijk_to_ras))
            outputSegmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
            segmentation = outputSegmentation.GetSegmentation()
            segmentation.RemoveAllSegments()
            maxLabel = max([spec.label_value for spec in result.segments] + [0])
            segmentIds = vtk.vtkStringArray()
            segmentIds.SetNumberOfValues(maxLabel)
            for index in range(maxLabel):
                segmentIds.SetValue(index, "")
            for spec in result.segments:
                segmentId = segmentation.AddEmptySegment("", spec.name, list(spec.color))
                if spec.terminology:
                    segment = segmentation.GetSegment(segmentId)
                    segment.SetTag(segment.GetTerminologyEntryTagName(), spec.terminology)
                segmentIds.SetValue(spec.label_value - 1, segmentId)
            slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelNode, outputSegmentation,
                                                                                  segmentIds)
        except Exception:
            outputSegmentation.GetSegmentation().RemoveAllSegments()  # never leave a half-made result
            raise
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)
        outputSegmentation.CreateDefaultDisplayNodes()
        outputSegmentation.CreateClosedSurfaceRepresentation()
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        shNode.SetItemParent(shNode.GetItemByDataNode(outputSegmentation),
                             shNode.GetItemParent(shNode.GetItemByDataNode(inputVolume)))

    def statusText(self, result) -> str:
        from KDSegmentationLib.volume_segmentation import format_timings

        text = format_timings(result.timings, result.device)
        return text + "".join("\n" + _("Warning: ") + w for w in result.warnings)

    def volumeRows(self, result):
        from KDSegmentationLib.volume_segmentation import format_volumes

        return format_volumes(result.volumes_ml)


class KDSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test: segments the bundled sample CT and SampleData's CTAAbdomenPanoramix on CPU."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_bundled_sample_ct()
        self.setUp()
        self.test_ct_abdomen_panoramix()

    def _checkSegmentation(self, volume, segmentationNode, liverRangeMl):
        logic = KDSegmentationLogic()
        card = logic.registry().get()
        segmentation = segmentationNode.GetSegmentation()
        names = [segmentation.GetSegment(i).GetName() for i in segmentation.GetSegmentIDs()]
        self.assertEqual(sorted(names), sorted(label.display_name for label in card.foreground_labels()))
        liverId = segmentation.GetSegmentIdBySegmentName("Liver")
        liver = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, liverId, volume)
        self.assertEqual(liver.shape, slicer.util.arrayFromVolume(volume).shape)
        liverMl = liver.astype(bool).sum() * float(np.prod(volume.GetSpacing())) / 1000.0
        self.assertTrue(liverRangeMl[0] < liverMl < liverRangeMl[1], f"liver volume {liverMl:.0f} mL")
        liverSegment = segmentation.GetSegment(liverId)
        entry = vtk.mutable("")
        self.assertTrue(liverSegment.GetTag(liverSegment.GetTerminologyEntryTagName(), entry))
        self.assertIn("SCT^10200004^Liver", str(entry))

    def test_bundled_sample_ct(self):
        from KDSegmentationLib.resources import sample_ct_path

        self.delayDisplay("Segmenting the bundled sample CT on CPU")
        volume = slicer.util.loadVolume(str(sample_ct_path()))
        segmentationNode = KDSegmentationLogic().process(volume, device="cpu")
        self._checkSegmentation(volume, segmentationNode, (300, 4000))
        self.delayDisplay("Bundled sample CT passed")

    def test_ct_abdomen_panoramix(self):
        import SampleData

        self.delayDisplay("Downloading CTAAbdomenPanoramix")
        volume = SampleData.downloadSample("CTAAbdomenPanoramix")
        segmentationNode = KDSegmentationLogic().process(volume, device="cpu")
        self._checkSegmentation(volume, segmentationNode, (300, 4000))
        self.delayDisplay("CTAAbdomenPanoramix passed")
