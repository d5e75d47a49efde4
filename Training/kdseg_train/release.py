"""Export a finished run as a release folder the Lib loads: ``model.onnx`` + ``registry.json``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

from KDSegmentationLib.registry import InputSpec, ModelCard, labels_from_anatomy, load_registry, write_registry

from .export import export_onnx, load_safetensors_model

__all__ = ["export_release"]


def export_release(run_dir: Path, release_dir: Path, model_id: str, title: str, version: str = "0.1.0",
                   evaluation: Optional[Path] = None, default: bool = True,
                   comparisons: Optional[Dict[str, Path]] = None, extra_metrics: Optional[Dict[str, Any]] = None,
                   intended_use: str = ("Demonstration weights trained on two patients; not for clinical use."),
                   description: Optional[str] = None) -> Path:
    """Export ``run_dir/final`` to ONNX in ``release_dir`` and add/replace its registry entry.

    Args:
        run_dir: a ``kdseg-train train``/``distill`` output folder.
        release_dir: folder holding ``registry.json`` and the ONNX files (created if needed).
        model_id / title / version: registry fields.
        evaluation: JSON written by ``kdseg-train evaluate``; copied into ``metrics``.
        comparisons: name -> evaluation JSON of other models (e.g. teacher, no-KD ablation);
            their summaries go into ``metrics["comparisons"]``.
        extra_metrics: further measured figures (e.g. latency) merged into ``metrics``.
        default: make this model the registry's default.

    Returns:
        Path of the written ``registry.json``.
    """
    run_dir, release_dir = Path(run_dir), Path(release_dir)
    final = run_dir / "final"
    model = load_safetensors_model(final)
    meta = json.loads((final / "config.json").read_text(encoding="utf-8"))
    file_name = f"{model_id}.onnx"
    onnx_path = export_onnx(model, release_dir / file_name, model.img_size)
    data = onnx_path.read_bytes()
    run_config = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").is_file() else ""
    training: Dict[str, Any] = {"architecture_config": meta["config"], "steps": meta.get("steps"),
                                "kind": meta.get("kind"), "run_config_yaml": run_config}
    summary = run_dir / "summary.json"
    if summary.is_file():
        training["summary"] = json.loads(summary.read_text(encoding="utf-8"))
    metrics: Dict[str, Any] = {}
    if evaluation is not None:
        metrics = json.loads(Path(evaluation).read_text(encoding="utf-8"))
    if comparisons:
        metrics["comparisons"] = {name: json.loads(Path(path).read_text(encoding="utf-8"))["summary"]
                                  for name, path in comparisons.items()}
    if extra_metrics:
        metrics.update(extra_metrics)
    card = ModelCard(
        id=model_id, title=title, version=version,
        description=description or f"{meta['config']['name']} ({meta['config']['attention']}), "
                                   f"{model.img_size}x{model.img_size} axial slices, 8 abdominal organs",
        architecture=meta["config"]["name"], file=file_name, size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(), urls=(file_name,),
        input=InputSpec(1, model.img_size, model.img_size, (-125.0, 275.0)),
        labels=labels_from_anatomy(), training=training, metrics=metrics, license="Apache-2.0",
        intended_use=intended_use)
    registry_path = release_dir / "registry.json"
    cards = []
    default_id = model_id if default else None
    if registry_path.is_file():
        existing = load_registry(registry_path)
        cards = [c for c in existing.models.values() if c.id != model_id]
        if not default:
            default_id = existing.default_model_id
    write_registry(registry_path, cards + [card], default_id)
    load_registry(registry_path)  # validate what was written
    return registry_path
