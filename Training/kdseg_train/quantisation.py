"""An int8 copy of a released fp32 model: static QDQ quantisation, its own evaluation, a registry entry.

    kdseg-train quantise Training/configs/student_distill_v2.yaml --release Resources/Models

ONNX Runtime's own tooling does the quantisation (``quant_pre_process``, then
``quantize_static`` in QDQ format: per-channel symmetric int8 weights, uint8 activations
with MinMax ranges; weights in 7-bit range so that CPUs without VNNI give the same result).
The calibration data is exactly what the pipeline feeds the network:
``segment_image`` runs on the config's *training* cases (each cropped to its slice band,
so no validation slice sets a range) with an engine that records its input batches, so
resize and physical-size models are handled alike.

The int8 model gets its own entry: its own evaluation on the config's validation cases
(the card's ``metrics``), the fp32 model's training record plus a ``quantisation`` record
(source model and SHA-256, method, ONNX Runtime version, calibration cases and slices).
Entries already in the release registry, and its default model, are kept.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from KDSegmentationLib.atomic_files import write_text_atomic
from KDSegmentationLib.weights.file_digest import sha256_of
from KDSegmentationLib.weights.model_registry import ModelCard, load_registry, write_registry

from .errors import UsageError
from .json_values import json_safe

__all__ = ["RecordingEngine", "calibration_batches", "calibration_images", "quantise_static", "quantised_card",
           "write_quantised_entry", "is_qdq_model", "case_mean_dice", "dice_comparison", "QUANTISATION_METHOD"]

QUANTISATION_METHOD = ("ONNX Runtime static quantisation (quant_pre_process + quantize_static), QDQ format, "
                       "per-channel symmetric int8 weights in 7-bit range (reduce_range: no uint8 x int8 "
                       "saturation on CPUs without VNNI), uint8 activations, MinMax calibration")


class RecordingEngine:
    """Runs another engine and keeps a float32 copy of every batch it is given (the calibration data)."""

    def __init__(self, engine) -> None:
        self.engine, self.device, self.batches = engine, engine.device, []
        self.input_shape = getattr(engine, "input_shape", None)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(np.array(batch, dtype=np.float32))
        return self.engine.run(batch)


def calibration_images(entries: Sequence[Dict[str, Any]], hu_window, num_classes: int, img_size: int) -> List:
    """The CT of each file-based entry in canonical orientation, cropped to the entry's slice band.

    Args:
        entries: config data entries (``data.train``), as ``load_cases`` reads them.

    Returns:
        ``[(case name, SimpleITK image), ...]``.

    Raises:
        UsageError: no entry is a CT file or folder (arrays and video frames cannot feed the Lib).
    """
    from KDSegmentationLib.imaging.image_files import read_image
    from KDSegmentationLib.imaging.orientation import to_canonical

    from .run_data import load_cases

    images = []
    for case in load_cases(entries, hu_window, num_classes, img_size):
        if "image" not in case.source or case.image.ndim != 3:
            continue
        first, stop = case.z_range
        images.append((case.name, to_canonical(read_image(case.source["image"]))[:, :, first:stop]))
    if not images:
        raise UsageError("no CT file among the calibration entries (data.train): int8 calibration needs CT volumes")
    return images


def calibration_batches(segmenter, images: Sequence) -> List[np.ndarray]:
    """The model input batches the pipeline builds for ``images`` (``[(name, image), ...]``)."""
    from KDSegmentationLib.inference.pipeline import SegmentationOptions, Segmenter, segment_image

    recorder = RecordingEngine(segmenter.engine)
    for _name, image in images:
        segment_image(image, Segmenter(segmenter.card, recorder), SegmentationOptions(postprocess=False))
    return recorder.batches


def quantise_static(fp32: Path, batches: Sequence[np.ndarray], target: Path, input_name: str) -> Path:
    """Write the static QDQ int8 copy of ``fp32`` to ``target``, calibrated on ``batches``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(prefix="kdseg_quant_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        staged = Path(tmp) / "int8.onnx"
        # reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2, early AVX-512) multiply uint8 x int8
        # pairs with VPMADDUBSW, whose 16-bit sums saturate for full-range weights (2 x 255 x 127 > 32767):
        # the same file would segment differently there. 2 x 255 x 63 fits, on every CPU.
        quantize_static(str(prepared), str(staged), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged, target)
    return Path(target)


def is_qdq_model(path: Path) -> bool:
    """The graph quantises its activations (QuantizeLinear) and holds int8 weights (checked, not assumed)."""
    import onnx

    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    int8 = any(init.data_type == onnx.TensorProto.INT8 for init in model.graph.initializer)
    return "QuantizeLinear" in ops and "DequantizeLinear" in ops and int8


def quantised_card(base: ModelCard, onnx_path: Path, model_id: str, evaluation: Dict[str, Any],
                   quantisation: Dict[str, Any], extra_metrics: Optional[Dict[str, Any]] = None) -> ModelCard:
    """The registry entry of the int8 copy of ``base``.

    Args:
        base: the fp32 model's card (input spec, labels, training record are taken over).
        onnx_path: the int8 file, named as the entry's ``file`` in its registry folder.
        model_id: the new entry's id.
        evaluation: the int8 model's own ``kdseg-train evaluate`` report (-> ``metrics``).
        quantisation: provenance recorded under ``training.quantisation``.
        extra_metrics: further measured figures (e.g. speed against fp32) merged into ``metrics``.
    """
    from .release import metrics_record

    onnx_path = Path(onnx_path)
    metrics = metrics_record(evaluation)
    metrics.update(extra_metrics or {})
    return dataclasses.replace(
        base, id=model_id, title=f"{base.title} - int8", file=onnx_path.name,
        description=(f"{base.description} int8 copy of {base.id} v{base.version}: static QDQ quantisation "
                     "(per-channel int8 weights, uint8 activations calibrated on the training slices), "
                     "smaller and faster on CPUs; its own validation figures are on its card."),
        size_bytes=onnx_path.stat().st_size, sha256=sha256_of(onnx_path), urls=(onnx_path.name,),
        training=json_safe(dict(base.training, quantisation=quantisation)), metrics=json_safe(metrics))


def write_quantised_entry(release_dir: Path, card: ModelCard) -> Path:
    """Add (or replace) ``card`` in ``release_dir/registry.json``, keeping the other entries and the default.

    Also writes ``<id>.md`` (the model card) and ``SHA256SUMS`` (every model file of the
    registry). The card's ONNX file must already be in ``release_dir`` with its stated checksum.

    Returns:
        Path of ``registry.json``.
    """
    from .release_card import render_model_card

    release_dir = Path(release_dir)
    onnx_path = release_dir / card.file
    if not onnx_path.is_file() or sha256_of(onnx_path) != card.sha256:
        raise UsageError(f"{onnx_path} is missing or does not match the card's SHA-256")
    registry_path = release_dir / "registry.json"
    others: List[ModelCard] = []
    default_id: Optional[str] = card.id
    if registry_path.is_file():
        existing = load_registry(registry_path)
        others = [other for other in existing.models.values() if other.id != card.id]
        default_id = existing.default_model_id or (others[0].id if others else card.id)
    if any(other.file == card.file for other in others):
        raise UsageError(f"{card.file} is already the file of another entry in {registry_path}")
    write_registry(registry_path, others + [card], default_id)
    written = load_registry(registry_path)
    write_text_atomic(release_dir / f"{card.id}.md", render_model_card(card))
    write_text_atomic(release_dir / "SHA256SUMS", "".join(f"{c.sha256}  {c.file}\n" for c in written.models.values()))
    return registry_path


def case_mean_dice(report: Dict[str, Any]) -> Dict[str, float]:
    """Mean Dice over the organs each validation case annotates (TransUNet protocol), per case."""
    means = {}
    for name, case in report["cases"].items():
        values = [organ["transunet"]["dice"] for organ in case["organs"].values()]
        means[name] = float(np.mean(values)) if values else float("nan")
    return means


def dice_comparison(fp32: Dict[str, Any], int8: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """Per case: fp32 and int8 mean Dice and their difference in points (int8 - fp32, x 100)."""
    a, b = case_mean_dice(fp32), case_mean_dice(int8)
    if set(a) != set(b):
        raise ValueError(f"the two reports scored different cases: {sorted(a)} vs {sorted(b)}")
    return {name: {"fp32": a[name], "int8": b[name], "points": 100 * (b[name] - a[name])} for name in a}
