"""``kdseg-train export``: a release folder the Lib loads directly (``registry.json`` + ONNX).

    kdseg-train export Training/configs/student_distill_demo.yaml
    kdseg --registry runs/student_distill_demo/release/registry.json segment ct.nii.gz -o seg.nii.gz

The registry entry (model card) records what a user needs to trust the file: SHA-256
and size, the labels with names, colours and SNOMED CT codes, the input contract
(size, HU window, ``window_to_unit`` normalisation, LPS axial slices), the metrics of
``kdseg-train evaluate`` and how the weights were made (data, recipe, steps, compute).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from KDSegmentationLib.atomic_files import write_text_atomic
from KDSegmentationLib.weights.download import sha256_of
from KDSegmentationLib.weights.url_policy import is_publishable_url
from KDSegmentationLib.weights.model_registry import (InputSpec, ModelCard, card_to_dict, labels_from_anatomy,
                                                      load_registry, write_registry)

from .errors import UsageError
from .json_values import json_safe
from .release_card import render_model_card

__all__ = ["write_release", "export_release", "training_record", "metrics_record", "check_download_url",
           "datalist_licences"]

_log = logging.getLogger("kdseg_train")


def _data_record(entries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    keep = ("name", "format", "datalist", "image", "label", "root", "split", "task", "remap", "labeled", "unlabeled",
            "slices")
    return [{k: entry[k] for k in keep if k in entry} for entry in entries or []]


def training_record(config: Dict[str, Any], run_dir: Optional[Path], step: Optional[int]) -> Dict[str, Any]:
    """How the weights were made: data, recipe, steps and compute (from the run's summary)."""
    summary: Dict[str, Any] = {}
    if run_dir is not None and (Path(run_dir) / "summary.json").is_file():
        summary = json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
    distill = {k: v for k, v in (config.get("distill") or {}).items() if k == "teacher" or
               (isinstance(v, dict) and float(v.get("weight", 0)) > 0)}
    record: Dict[str, Any] = {
        "kind": summary.get("kind", "distill" if distill.get("teacher") and len(distill) > 1 else "train"),
        "steps": step if step is not None else summary.get("steps"),
        "data": {"train": _data_record(config["data"].get("train")), "val": _data_record(config["data"].get("val")),
                 "description": config.get("export", {}).get("training_data")},
        "recipe": {"model": config["model"], "optim": config["optim"], "loss": config.get("loss"),
                   "batch_size": config["data"]["batch_size"], "augment": config["data"].get("augment"),
                   "hu_window": config["data"]["hu_window"], "max_steps": config["train"]["max_steps"],
                   "seed": config["train"]["seed"], "distill": distill or None},
        "compute": {k: summary[k] for k in ("device", "world_size", "threads", "wall_hours", "cpu_hours")
                    if k in summary},
        "framework": f"torch {torch.__version__}",
    }
    if step is not None and summary.get("steps") != step:
        record["note"] = f"exported from the checkpoint at step {step} of {config['train']['max_steps']} (unfinished)"
    if "validation" in summary:
        record["validation_at_end"] = summary["validation"]
    return record


def metrics_record(evaluation: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The model card's ``metrics``: the evaluation summary (both protocols), its cases and model source."""
    if not evaluation:
        return {}
    return {"evaluation": {"backend": evaluation["model"].get("backend"), "cases": list(evaluation["cases"]),
                           "protocols": evaluation.get("protocols"), "summary": evaluation["summary"]}}


def write_release(model: nn.Module, run_dir: Optional[Path], release_dir: Path, model_id: str, title: str,
                  config: Dict[str, Any], step: Optional[int] = None, version: str = "0.1.0",
                  description: Optional[str] = None, intended_use: str = "", evaluation: Optional[Dict] = None,
                  extra_metrics: Optional[Dict[str, Any]] = None, default: bool = True,
                  onnx_name: Optional[str] = None, urls: Sequence[str] = (),
                  data_licences: Sequence[str] = (), weights_licence: str = "Apache-2.0") -> Path:
    """Export ``model`` to ONNX in ``release_dir`` and add (or replace) its entry in ``registry.json``.

    Args:
        model: trained network (CT: 1 input channel, 9 classes in Synapse order).
        run_dir: its run folder (for ``summary.json``), or None.
        release_dir: the release folder (created if needed; other entries are kept).
        model_id / title / version / description / intended_use: card fields.
        config: the run config (data, recipe, HU window).
        step: training steps of these weights (default: from the run summary).
        evaluation: report of :func:`kdseg_train.evaluation.evaluate` for ``metrics``.
        extra_metrics: further measured figures merged into ``metrics``.
        default: make this model the registry's default.
        onnx_name: file name (default: the replaced entry's file, else ``model.onnx`` when the registry holds
            no other model, else ``<id>.onnx``).
        urls: where users download the ONNX file (https://; http:// only for localhost). Given, the
            release also holds ``<id>.registry-entry.json``: the one entry a maintainer adds to
            ``Resources/Models/registry.json``. Default: the file next to the registry.
        data_licences: licences of the training data, recorded under ``training.data.licences``
            (with those of converted datalists in the config).
        weights_licence: the card's ``license`` (of the weights).

    Also writes ``<id>.md`` (the model card as Markdown) and ``SHA256SUMS`` (every model file of
    the registry), so the folder is a complete release.

    Returns:
        Path of ``registry.json``.
    """
    from .export import export_onnx

    if getattr(model, "in_channels", 1) != 1 or getattr(model, "num_classes", 9) != 9:
        raise UsageError("the Lib segments CT with the 8 Synapse organs: only 1-channel, 9-class models can be "
                         f"released (this one has {model.in_channels} channels, {model.num_classes} classes); "
                         "use kdseg_train.export.export_onnx for other models")
    release_dir = Path(release_dir)
    release_dir.mkdir(parents=True, exist_ok=True)
    registry_path = release_dir / "registry.json"
    others: List[ModelCard] = []
    replaced: List[str] = []
    default_id: Optional[str] = model_id
    if registry_path.is_file():
        existing = load_registry(registry_path)
        others = [card for card in existing.models.values() if card.id != model_id]
        replaced = [card.file for card in existing.models.values() if card.id == model_id]
        if not default:
            default_id = existing.default_model_id
    if onnx_name is None:
        # A release of one model holds model.onnx; in a shared folder each file is named by its id.
        onnx_name = replaced[0] if replaced else ("model.onnx" if not others else f"{model_id}.onnx")
    onnx_path = export_onnx(model, release_dir / onnx_name, model.img_size)
    low, high = (float(v) for v in config["data"]["hu_window"])
    for url in urls:
        check_download_url(url)
    training = training_record(config, run_dir, step)
    training["data"]["licences"] = sorted(set(datalist_licences(config)) | {str(t) for t in data_licences})
    metrics = metrics_record(evaluation)
    metrics.update(extra_metrics or {})
    card = ModelCard(
        id=model_id, title=title, version=version,
        description=description or (f"{model.config.name} ({model.config.attention.upper()}), "
                                    f"{model.img_size}x{model.img_size} axial CT slices, 8 abdominal organs"),
        architecture=model.config.name, file=onnx_name, size_bytes=onnx_path.stat().st_size,
        sha256=sha256_of(onnx_path), urls=tuple(urls) or (onnx_name,),
        input=InputSpec(channels=1, height=model.img_size, width=model.img_size, hu_window=(low, high),
                        normalization="window_to_unit", slice_orientation="LPS",
                        pixel_spacing_mm=_pixel_spacing(config)),
        labels=labels_from_anatomy(), training=json_safe(training),
        metrics=json_safe(metrics), license=weights_licence, intended_use=intended_use)
    write_registry(registry_path, others + [card], default_id)
    written = load_registry(registry_path)  # what was written must validate
    write_text_atomic(release_dir / f"{model_id}.md", render_model_card(card))
    write_text_atomic(release_dir / "SHA256SUMS", "".join(f"{c.sha256}  {c.file}\n" for c in written.models.values()))
    if urls:
        write_text_atomic(release_dir / f"{model_id}.registry-entry.json",
                          json.dumps(card_to_dict(card), indent=2) + "\n")
    return registry_path


def check_download_url(url: str) -> str:
    """Refuse a download URL users could not fetch safely: https://, or http:// to localhost (tests) only.

    Raises:
        ValueError: another scheme, no host, or plain http to another host.
    """
    if not is_publishable_url(url):
        raise UsageError(f"download URL {url!r} must be an https:// address of the ONNX file (http:// only for "
                         "127.0.0.1/localhost, for tests); kdseg refuses anything else")
    return url


def datalist_licences(config: Dict[str, Any]) -> List[str]:
    """"<dataset>: <licence>" of every converted datalist (``kdseg-train convert --layout``) the config trains on."""
    out = []
    for entry in list(config["data"].get("train") or []) + list(config["data"].get("val") or []):
        if isinstance(entry, dict) and entry.get("datalist"):
            path = Path(entry["datalist"])
            if path.is_file():
                meta = json.loads(path.read_text(encoding="utf-8"))
                if meta.get("licence"):
                    out.append(f"{meta.get('title') or meta.get('layout')}: {meta['licence']}")
    return out


def _pixel_spacing(config: Dict[str, Any]) -> Optional[float]:
    """The model grid's mm per pixel (physical-size input), or None (resize mode), from the run's ``model:``."""
    spacing = (config.get("model") or {}).get("pixel_spacing_mm")
    return None if spacing is None else float(spacing)


def export_release(run_dir: Path, release_dir: Path, model_id: str, title: str, config: Dict[str, Any],
                   evaluation_path: Optional[Path] = None, from_checkpoint: bool = False, **card: Any) -> Path:
    """Release the final weights (or, with ``from_checkpoint``, the latest checkpoint) of a run folder."""
    from .model_source import ModelSource, load_run_model

    run_dir = Path(run_dir)
    if not from_checkpoint and not (run_dir / "final" / "model.safetensors").is_file():
        raise FileNotFoundError(f"{run_dir} has no final/model.safetensors: the run has not finished. Finish it "
                                "(same command plus --resume), or export its latest checkpoint with --checkpoint")
    model, step = load_run_model(ModelSource("run", run_dir, model_id, from_checkpoint))
    evaluation = None
    if evaluation_path is not None:
        evaluation_path = Path(evaluation_path)
        if not evaluation_path.is_file():
            raise FileNotFoundError(f"evaluation report {evaluation_path} does not exist; run kdseg-train evaluate "
                                    "first or leave --evaluation out")
        evaluation = json.loads(evaluation_path.read_text(encoding="utf-8"))
    return write_release(model, run_dir, release_dir, model_id, title, config, step=step, evaluation=evaluation,
                         **card)
