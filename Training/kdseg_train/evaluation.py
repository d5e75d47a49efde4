"""``kdseg-train evaluate``: per-case, per-organ Dice and HD95 of a model, as JSON and Markdown.

The model is run either through the Lib's ONNX pipeline (``backend: onnx``, what Slicer
and ``kdseg`` users get: :func:`KDSegmentationLib.inference.pipeline.segment_image` on the image
read from disk) or directly in PyTorch (``backend: pytorch``, any run folder or
checkpoint, also for Cataract-1K frames). Two protocols are reported side by side (see
:mod:`kdseg_train.metrics`): ``transunet`` (voxel-unit HD95 and TransUNet's empty-mask
rules, comparable with published Synapse tables) and ``physical`` (MONAI, spacing-aware
HD95 in mm, undefined values left out of means).

Only the organs a case annotates are scored (``unlabeled`` organs of an entry are not).
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.atomic_files import write_text_atomic

from .errors import UsageError
from .json_values import json_safe
from .metrics import mean_std, physical_case_metrics, transunet_case_metrics
from .model_source import ModelSource, load_run_model
from .run_data import EvaluationCase, load_cases

__all__ = ["evaluate", "summarize", "write_reports", "PROTOCOLS"]

_log = logging.getLogger("kdseg_train")

PROTOCOLS = {
    "transunet": "TransUNet/medpy: Dice and HD95 in voxel units (no spacing); prediction present and ground truth "
                 "empty -> Dice 1, HD95 0; prediction empty -> Dice 0, HD95 0. Mean over cases per organ.",
    "physical": "MONAI: Dice and spacing-aware HD95 in mm (max of the two directed 95th percentiles); undefined "
                "values (organ absent from the ground truth, or missed for HD95) are left out of the means.",
}


def _onnx_segmenter(source: ModelSource, config: Dict[str, Any], workdir: Path):
    from KDSegmentationLib.inference.pipeline import Segmenter

    if source.kind == "registry":
        return Segmenter.from_registry(source.model_id, device="cpu", registry=source.path, allow_download=False)
    from .release import write_release

    model, step = load_run_model(source)
    registry = write_release(model, source.path, workdir, model_id=source.model_id or "evaluated-model",
                             title="model under evaluation", config=config, step=step)
    return Segmenter.from_registry(None, device="cpu", registry=registry, allow_download=False)


def _image_for_lib(case: EvaluationCase, hu_window) -> sitk.Image:
    """The CT to give the Lib: read from disk for file entries; rebuilt in HU for Synapse arrays."""
    from KDSegmentationLib.imaging.image_files import read_image

    if "image" in case.source:
        return read_image(case.source["image"])
    low, high = float(hu_window[0]), float(hu_window[1])
    image = sitk.GetImageFromArray((case.image * (high - low) + low).astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(case.spacing_zyx)))
    return image


def _predict_onnx(segmenter, case: EvaluationCase, hu_window, postprocess: bool, batch_size: int) -> np.ndarray:
    from KDSegmentationLib.imaging.orientation import to_canonical
    from KDSegmentationLib.inference.pipeline import SegmentationOptions, segment_image

    if case.image.ndim != 3:
        raise UsageError(f"case {case.name}: the Lib's pipeline segments CT volumes; evaluate video frames with "
                         "--backend pytorch")
    result = segment_image(_image_for_lib(case, hu_window), segmenter,
                           SegmentationOptions(postprocess=postprocess, batch_size=batch_size))
    labels = sitk.GetArrayFromImage(to_canonical(result.labels))
    a, b = case.z_range
    pred = labels[a:b] if "image" in case.source else labels
    if pred.shape != case.labels.shape:
        raise RuntimeError(f"case {case.name}: prediction {pred.shape} and reference {case.labels.shape} differ")
    return pred


def evaluate(config: Dict[str, Any], source: ModelSource, backend: str = "onnx",
             progress: bool = True) -> Dict[str, Any]:
    """Segment every evaluation case and compute both protocols' metrics.

    Args:
        config: resolved run config; cases are ``evaluate.cases`` or else ``data.val``.
        source: the model (see :func:`resolve_model_source`).
        backend: ``onnx`` (the Lib's pipeline) or ``pytorch``.

    Returns:
        The report as a JSON-serialisable dict (``cases``, ``summary``, ``model``, ...).
    """
    from .run_data import model_grid
    from .volume_inference import predict_case

    if backend not in ("onnx", "pytorch"):
        raise UsageError(f"evaluate.backend must be onnx or pytorch, got {backend!r}")
    if source.kind == "registry" and backend == "pytorch":
        raise UsageError("a release registry holds ONNX models; evaluate it with --backend onnx, or pass the run "
                         "folder for --backend pytorch")
    ev = config["evaluate"]
    entries = ev.get("cases") or config["data"].get("val") or []
    if not entries:
        raise UsageError("no evaluation cases: set evaluate.cases or data.val in the config")
    num_classes = int(config["model"]["num_classes"])
    hu_window = config["data"]["hu_window"]
    img_size = int(config["model"]["img_size"])
    cases = load_cases(entries, hu_window, num_classes, img_size)
    names = _class_names(num_classes)
    started = time.time()
    model_info: Dict[str, Any] = {"source": str(source.path), "backend": backend}
    with tempfile.TemporaryDirectory(prefix="kdseg-eval-") as workdir:
        if backend == "onnx":
            segmenter = _onnx_segmenter(source, config, Path(workdir))
            model_info.update(id=segmenter.card.id, architecture=segmenter.card.architecture,
                              input_size=[segmenter.card.input.height, segmenter.card.input.width],
                              postprocess=bool(ev["postprocess"]))
        else:
            model, step = load_run_model(source)
            img_size = model.img_size
            model_info.update(architecture=model.config.name, input_size=[img_size, img_size],
                              checkpoint_step=step)
        results: Dict[str, Any] = {}
        for i, case in enumerate(cases):
            if progress:
                _log.warning("evaluating case %d/%d: %s", i + 1, len(cases), case.name)
            if backend == "onnx":
                pred = _predict_onnx(segmenter, case, hu_window, bool(ev["postprocess"]),
                                     int(ev["batch_size"]))
            else:
                pred = predict_case(model, case.image, model_grid(dict(config["model"], img_size=img_size)),
                                    int(ev["batch_size"]), spacing_yx=case.spacing_zyx[1:])
            tu = transunet_case_metrics(pred, case.labels, case.organs)
            ph = physical_case_metrics(pred, case.labels, case.organs, case.spacing_zyx)
            results[case.name] = {
                "spacing_zyx": list(case.spacing_zyx), "shape_zyx": list(case.labels.shape),
                "z_range": list(case.z_range),
                "organs": {names[i]: {"transunet": tu[i], "physical": ph[i]} for i in case.organs}}
    return {
        "model": model_info,
        "protocols": PROTOCOLS,
        "cases": results,
        "summary": summarize(results),
        "environment": {"seconds": round(time.time() - started, 1), "machine": platform.machine(),
                        "python": platform.python_version()},
    }


def summarize(cases: Dict[str, Any]) -> Dict[str, Any]:
    """Mean ± std over cases per organ and protocol, and the mean over organs (TransUNet's headline)."""
    organs: List[str] = []
    for case in cases.values():
        organs += [o for o in case["organs"] if o not in organs]
    summary: Dict[str, Any] = {}
    for protocol, metric_keys in (("transunet", ("dice", "hd95")), ("physical", ("dice", "hd95_mm"))):
        per_organ = {}
        for organ in organs:
            values = [c["organs"][organ][protocol] for c in cases.values() if organ in c["organs"]]
            per_organ[organ] = {k: mean_std([v[k] for v in values]) for k in metric_keys}
        overall = {}
        for key in metric_keys:
            organ_means = [per_organ[o][key]["mean"] for o in organs]
            case_means = [float(np.nanmean([c["organs"][o][protocol][key] for o in c["organs"]]))
                          if any(np.isfinite(c["organs"][o][protocol][key]) for o in c["organs"]) else float("nan")
                          for c in cases.values()]
            overall[key] = {"mean": mean_std(organ_means)["mean"], "std_over_cases": mean_std(case_means)["std"],
                            "n_organs": mean_std(organ_means)["n"]}
        summary[protocol] = {"organs": per_organ, "mean": overall}
    return summary


def _fmt(stats: Dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
    if not stats["n"]:
        return "n/a"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def write_reports(report: Dict[str, Any], output: Path) -> Dict[str, Path]:
    """``evaluation.json`` and ``evaluation.md`` in ``output`` (atomic writes)."""
    output.mkdir(parents=True, exist_ok=True)
    json_path = output / "evaluation.json"
    write_text_atomic(json_path, json.dumps(json_safe(report), indent=2, allow_nan=False))
    model = report["model"]
    lines = [f"# Evaluation of {model.get('id') or model.get('architecture')}", "",
             f"Model: `{model['source']}` ({model['architecture']}, input {model['input_size'][0]} px), backend "
             f"**{model['backend']}**" + (" through the Lib's `segment_image`" if model["backend"] == "onnx" else "")
             + f"; {len(report['cases'])} case(s): {', '.join(report['cases'])}.", ""]
    tu, ph = report["summary"]["transunet"], report["summary"]["physical"]
    lines += ["## TransUNet protocol (Dice %, HD95 in voxels)", "", PROTOCOLS["transunet"], "",
              "| organ | Dice (%) mean ± std | HD95 (vox) mean ± std | cases |", "|---|---|---|---|"]
    for organ, stats in tu["organs"].items():
        lines.append(f"| {organ} | {_fmt(stats['dice'], 100)} | {_fmt(stats['hd95'])} | {stats['dice']['n']} |")
    lines.append(f"| **mean** | **{tu['mean']['dice']['mean'] * 100:.2f}** | **{tu['mean']['hd95']['mean']:.2f}** | |")
    lines += ["", "## Physical protocol (MONAI, HD95 in mm)", "", PROTOCOLS["physical"], "",
              "| organ | Dice mean ± std | HD95 (mm) mean ± std | cases with organ |", "|---|---|---|---|"]
    for organ, stats in ph["organs"].items():
        lines.append(f"| {organ} | {_fmt(stats['dice'], 1, 3)} | {_fmt(stats['hd95_mm'])} | {stats['dice']['n']} |")
    lines.append(f"| **mean** | **{ph['mean']['dice']['mean']:.3f}** | **{ph['mean']['hd95_mm']['mean']:.2f}** | |")
    lines += ["", "## Per case (physical Dice)", "", "| case | " + " | ".join(tu["organs"]) + " |",
              "|---" * (len(tu["organs"]) + 1) + "|"]
    for name, case in report["cases"].items():
        cells = []
        for organ in tu["organs"]:
            value = case["organs"].get(organ, {}).get("physical", {}).get("dice")
            cells.append("—" if value is None else ("n/a" if not np.isfinite(value) else f"{value:.3f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "n/a: undefined (Dice: organ absent from every reference; HD95: organ absent or missed). "
              "—: organ not annotated in that case.", ""]
    md_path = output / "evaluation.md"
    write_text_atomic(md_path, "\n".join(lines))
    return {"json": json_path, "markdown": md_path}


def _class_names(num_classes: int) -> Dict[int, str]:
    if num_classes == 9:
        from KDSegmentationLib.anatomy import SYNAPSE_ORGANS

        return {organ.index: organ.name for organ in SYNAPSE_ORGANS}
    return {i: f"class{i}" for i in range(1, num_classes)}
