"""Is an int8 copy of the shipped model worth shipping? Quantise it, time it against fp32, score both.

    python benchmarks/int8.py --config Training/configs/student_distill_v2.yaml
                              [--registry REG] [--model ID] [--calibration-ct CT ...]
                              [--repeats 5] [--write DIR] [--json FILE]

Static QDQ quantisation exactly as ``kdseg-train quantise`` ships it
(``kdseg_train.quantisation``: per-channel int8 weights, uint8 activations calibrated on
real CT slices); dynamic quantisation (``quantize_dynamic``) is timed too. Calibration
batches are exactly what the pipeline feeds the network: ``segment_image`` runs on the
config's training cases (each cropped to its slice band; or on ``--calibration-ct``) with
an engine that records its inputs, so resize and physical-size models are handled alike.

Speed: fp32 and int8 sessions with the pipeline's session options on the recorded
batches, repeats interleaved. Accuracy: ``kdseg-train evaluate``'s evaluation (the
Lib's pipeline, the config's validation cases) of the fp32 and the int8 model, mean Dice
over organs (TransUNet protocol) side by side. The project ships int8 only if it is at
least 1.5x faster and its mean Dice is within 0.5 points (0.005) of fp32; the script
prints that verdict. ``--write DIR`` writes the int8 ONNX and a bare registry entry there
(for trying it; ``kdseg-train quantise`` writes the shippable entry with its own card).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from KDSegmentationLib.imaging.image_files import read_image
from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.inference.onnx_engine import _session_options
from KDSegmentationLib.inference.pipeline import Segmenter
from KDSegmentationLib.weights.file_digest import sha256_of
from KDSegmentationLib.weights.model_registry import ModelCard, load_registry, write_registry
from kdseg_train.quantisation import calibration_batches, calibration_images, quantise_static

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
MIN_SPEED_UP = 1.5
MAX_DICE_LOSS = 0.005


def quantise(fp32: Path, batches: List[np.ndarray], directory: Path, input_name: str) -> Dict[str, Path]:
    """Static QDQ (as ``kdseg-train quantise`` ships it) and dynamic int8 copies of ``fp32``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    static = quantise_static(fp32, batches, directory / "int8-qdq.onnx", input_name)
    prepared, dynamic = directory / "prepared.onnx", directory / "int8-dynamic.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(dynamic), weight_type=QuantType.QInt8)
    return {"int8 static QDQ": static, "int8 dynamic": dynamic}


def time_models(models: Dict[str, Path], batches: List[np.ndarray], input_name: str, threads: Optional[int],
                repeats: int) -> Dict[str, float]:
    """Median seconds per slice of each model over the same batches, repeats interleaved."""
    import onnxruntime as ort

    sessions = {name: ort.InferenceSession(str(path), _session_options(threads), providers=["CPUExecutionProvider"])
                for name, path in models.items()}
    sample = batches[: max(1, min(len(batches), 6))]
    slices = sum(len(b) for b in sample)
    for session in sessions.values():
        session.run(None, {input_name: sample[0]})
    times: Dict[str, List[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            for batch in sample:
                session.run(None, {input_name: batch})
            times[name].append((time.perf_counter() - start) / slices)
    return {name: float(np.median(v)) for name, v in times.items()}


def registry_with(card: ModelCard, onnx: Path, directory: Path, model_id: str) -> Path:
    target = directory / f"{model_id}.onnx"
    if onnx.resolve() != target.resolve():
        target.write_bytes(onnx.read_bytes())
    entry = dataclasses.replace(card, id=model_id, file=target.name, size_bytes=target.stat().st_size,
                                sha256=sha256_of(target), urls=(target.name,))
    return write_registry(directory / f"{model_id}.json", [entry], model_id)


def mean_dice(config_path: Path, registry: Path) -> float:
    from kdseg_train.config import load_config
    from kdseg_train.evaluation import evaluate
    from kdseg_train.model_source import resolve_model_source

    config = load_config(config_path, [])
    report = evaluate(config, resolve_model_source(config, registry), "onnx", progress=False)
    return float(report["summary"]["transunet"]["mean"]["dice"]["mean"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="training config whose validation cases score both models")
    parser.add_argument("--registry", type=Path, help="registry JSON (default: the bundled one)")
    parser.add_argument("--model", help="model id (default: the registry's default)")
    parser.add_argument("--calibration-ct", type=Path, nargs="+", default=None,
                        help="calibrate on these whole CTs (default: the --config's training cases, each cropped to "
                             "its slice band, as kdseg-train quantise does; without --config: the example CT)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="write the int8 QDQ ONNX and its registry entry here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    registry = load_registry(args.registry)
    card = registry.get(args.model)
    segmenter = Segmenter.from_registry(card.id, device="cpu", threads=args.threads, registry=registry,
                                        allow_download=False)
    fp32 = Path(segmenter.engine.model_path)
    print(f"model: {card.id} v{card.version} ({fp32.name}, {fp32.stat().st_size / 1e6:.1f} MB)")
    if args.calibration_ct or not args.config:
        cts = args.calibration_ct or [DATA / "totalsegmentator_example" / "example_ct.nii.gz"]
        images = [(ct.name, to_canonical(read_image(ct))) for ct in cts]
    else:
        from kdseg_train.config import load_config

        config = load_config(args.config, [])
        images = calibration_images(config["data"]["train"], config["data"]["hu_window"],
                                    int(config["model"]["num_classes"]), int(config["model"]["img_size"]))
    batches = calibration_batches(segmenter, images)
    print(f"calibration: {sum(len(b) for b in batches)} slices in {len(batches)} pipeline batches from "
          f"{', '.join(name for name, _ in images)}")
    with tempfile.TemporaryDirectory(prefix="kdseg_int8_") as tmp:
        directory = Path(tmp)
        quantised = quantise(fp32, batches, directory, card.input.input_name)
        models = {"fp32": fp32, **quantised}
        seconds = time_models(models, batches, card.input.input_name, args.threads, args.repeats)
        figures: Dict[str, object] = {"model": card.id, "ms_per_slice": {k: 1e3 * v for k, v in seconds.items()},
                                      "mb": {k: p.stat().st_size / 1e6 for k, p in models.items()}}
        figures["int8_static_qdq_sha256"] = sha256_of(quantised["int8 static QDQ"])
        print(f"int8 static QDQ SHA-256 {figures['int8_static_qdq_sha256']} (the same procedure as kdseg-train "
              "quantise: compare with the bundled int8 entry)")
        print(f"\nms per slice (median of {args.repeats} interleaved repeats) and speed-up over fp32:")
        for name, value in seconds.items():
            print(f"  {name:<18} {1e3 * value:8.2f} ms  {seconds['fp32'] / value:5.2f}x  "
                  f"{models[name].stat().st_size / 1e6:6.1f} MB")
        speed_up = seconds["fp32"] / seconds["int8 static QDQ"]
        dice = None
        if args.config:
            dice = {"fp32": mean_dice(args.config, registry_with(card, fp32, directory, "fp32")),
                    "int8": mean_dice(args.config, registry_with(card, quantised["int8 static QDQ"], directory,
                                                                 "int8"))}
            figures["mean_dice"] = dice
            print(f"\nmean Dice over organs on the validation cases of {args.config.name}: fp32 {dice['fp32']:.4f}, "
                  f"int8 {dice['int8']:.4f} ({100 * (dice['int8'] - dice['fp32']):+.2f} points)")
        ship = speed_up >= MIN_SPEED_UP and dice is not None and dice["fp32"] - dice["int8"] <= MAX_DICE_LOSS
        figures.update(speed_up=speed_up, ship_int8=ship)
        print(f"\nverdict: int8 static QDQ is {speed_up:.2f}x fp32 (needs >= {MIN_SPEED_UP}x)"
              + ("" if dice else "; no Dice without --config") + f" -> {'ship it' if ship else 'do not ship'}")
        if args.write:
            args.write.mkdir(parents=True, exist_ok=True)
            entry = registry_with(card, quantised["int8 static QDQ"], args.write, f"{card.id}-int8")
            print(f"int8 model and registry entry written: {entry}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
