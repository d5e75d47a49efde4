"""``kdseg-train quantise``: an int8 (static QDQ) copy of a released model, evaluated, as a registry entry."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import tempfile
from pathlib import Path

from ..errors import UsageError
from .common import add_config_arguments, report_errors

__all__ = ["register"]

DEFAULT_MAX_DICE_LOSS_POINTS = 0.5


@report_errors
def _run(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from KDSegmentationLib.inference.pipeline import Segmenter
    from KDSegmentationLib.weights.model_registry import load_registry, write_registry

    from ..config import load_config
    from ..evaluation import evaluate, write_reports
    from ..model_source import ModelSource
    from ..quantisation import (QUANTISATION_METHOD, calibration_batches, calibration_images, dice_comparison,
                                is_qdq_model, quantise_static, quantised_card, write_quantised_entry)

    config = load_config(args.config, args.overrides or [])
    registry = load_registry(args.model)
    base = registry.get(args.model_id)
    int8_id = args.int8_id or f"{base.id}-int8"
    if int8_id == base.id:
        raise UsageError(f"--int8-id must differ from the fp32 model's id {base.id!r}")
    release = Path(args.release or Path(config["output"]) / "int8_release")
    _refuse_file_of_another_entry(release, int8_id, f"{int8_id}.onnx")  # before hours of work, not after
    reports = Path(args.output or Path(config["output"]) / f"evaluation_{int8_id}")
    extra = {}
    if args.metrics_json:
        extra = json.loads(Path(args.metrics_json).read_text(encoding="utf-8"))
        if not isinstance(extra, dict):
            raise UsageError(f"{args.metrics_json} must hold a JSON object")

    segmenter = Segmenter.from_registry(base.id, device="cpu", registry=registry, allow_download=False)
    images = calibration_images(config["data"]["train"], config["data"]["hu_window"],
                                int(config["model"]["num_classes"]), int(config["model"]["img_size"]))
    batches = calibration_batches(segmenter, images)
    slices = sum(len(batch) for batch in batches)
    print(f"calibration: {slices} slices in {len(batches)} pipeline batches of {', '.join(n for n, _ in images)}")
    with tempfile.TemporaryDirectory(prefix="kdseg_int8_") as tmp:
        staged = quantise_static(Path(segmenter.engine.model_path), batches, Path(tmp) / f"{int8_id}.onnx",
                                 base.input.input_name)
        if not is_qdq_model(staged):
            raise RuntimeError(f"ONNX Runtime's quantiser wrote no QDQ int8 graph to {staged}")
        quantisation = {
            "source_model": base.id, "source_version": base.version, "source_sha256": base.sha256,
            "method": QUANTISATION_METHOD, "onnxruntime": ort.__version__,
            "calibration": {"cases": [name for name, _ in images], "slices": slices, "batches": len(batches),
                            "data": "the pipeline's model inputs of the config's training cases (data.train), "
                                    "each cropped to its slice band"},
            "command": _command_line(args)}
        # Evaluate the staged file through a one-entry registry before anything is written to the release.
        probe = quantised_card(base, staged, int8_id, {}, quantisation)
        probe_registry = write_registry(Path(tmp) / "registry.json", [probe], int8_id)
        int8_report = evaluate(config, ModelSource("registry", probe_registry, int8_id), "onnx")
        fp32_report = evaluate(config, ModelSource("registry", Path(registry.path), base.id), "onnx")
        write_reports(int8_report, reports / "int8")
        write_reports(fp32_report, reports / "fp32")
        comparison = dice_comparison(fp32_report, int8_report)
        print(f"mean Dice per validation case (fp32 -> int8), reports in {reports}:")
        for name, row in comparison.items():
            print(f"  {name:<24} {row['fp32']:.4f} -> {row['int8']:.4f} ({row['points']:+.2f} points)")
        scored = [row["points"] for row in comparison.values() if not math.isnan(row["points"])]
        if not scored:
            raise UsageError("no validation case scored an organ, so the int8 model cannot be checked against "
                             "fp32; nothing was written. Give data.val cases with labels")
        worst = min(scored)
        if worst < -args.max_dice_loss:
            raise UsageError(f"the int8 model loses {-worst:.2f} Dice points on a validation case (allowed: "
                             f"{args.max_dice_loss}); nothing was written. Calibrate on more data or keep fp32")
        extra["fp32_comparison"] = {"model": base.id, "per_case_mean_dice": comparison,
                                    "max_loss_points_allowed": args.max_dice_loss}
        release.mkdir(parents=True, exist_ok=True)
        target = release / f"{int8_id}.onnx"
        _refuse_file_of_another_entry(release, int8_id, target.name)  # before anything in the release changes
        from KDSegmentationLib.atomic_files import atomic_file

        with atomic_file(target, keep_suffix=True) as tmp_target:
            tmp_target.write_bytes(staged.read_bytes())
    card = quantised_card(base, target, int8_id, int8_report, quantisation, extra)
    registry_path = write_quantised_entry(release, card)
    print(f"int8 entry {int8_id} written: {registry_path} ({card.size_bytes / 1e6:.1f} MB, fp32 "
          f"{base.size_bytes / 1e6:.1f} MB); model card {release / (int8_id + '.md')}")
    print(f"try it: kdseg --registry {registry_path} segment CT.nii.gz -o seg.nii.gz --model {int8_id}")
    return 0


def _refuse_file_of_another_entry(release: Path, int8_id: str, file_name: str) -> None:
    """UsageError when another entry of ``release``'s registry already uses ``file_name``."""
    registry_path = release / "registry.json"
    if not registry_path.is_file():
        return
    from KDSegmentationLib.weights.model_registry import load_registry

    for other in load_registry(registry_path).models.values():
        if other.id != int8_id and other.file == file_name:
            raise UsageError(f"{file_name} is already the file of entry {other.id} in {registry_path}; choose "
                             "another --int8-id. Nothing was written")


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this quantisation (the options that change its result)."""
    words = ["kdseg-train", "quantise", str(args.config)]
    if args.overrides:
        words += ["--set", *args.overrides]
    for option, value in (("--model", args.model), ("--model-id", args.model_id), ("--int8-id", args.int8_id),
                          ("--release", args.release)):
        if value is not None:
            words += [option, str(value)]
    return " ".join(shlex.quote(word) for word in words)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantise", help="int8 (static QDQ) copy of a released model, evaluated against it, as a registry entry",
        description="Quantise a registry's fp32 model to int8 (ONNX Runtime static QDQ, calibrated on the config's "
                    "training cases through the Lib's pipeline), evaluate both on the config's validation cases "
                    "and, if no case loses more than --max-dice-loss points of mean Dice, add the int8 model as "
                    "its own entry (card, SHA256SUMS) to the release folder; its default model stays.")
    add_config_arguments(parser)
    parser.add_argument("--model", type=Path, default=None,
                        help="registry JSON of the fp32 model (default: the bundled Resources/Models/registry.json)")
    parser.add_argument("--model-id", default=None, help="fp32 model to quantise (default: the registry's default)")
    parser.add_argument("--int8-id", default=None, help="id of the int8 entry (default: <model id>-int8)")
    parser.add_argument("--release", type=Path, default=None,
                        help="release folder to add the entry to, e.g. Resources/Models (default: "
                             "<output>/int8_release)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="evaluation reports of both models (default: <output>/evaluation_<int8 id>)")
    parser.add_argument("--max-dice-loss", type=float, default=DEFAULT_MAX_DICE_LOSS_POINTS, metavar="POINTS",
                        help="largest drop of a validation case's mean Dice, in points (default 0.5)")
    parser.add_argument("--metrics-json", type=Path, default=None,
                        help="further measured figures for the card's metrics (a JSON object, e.g. speed)")
    parser.set_defaults(handler=_run)
