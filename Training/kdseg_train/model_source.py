"""Which trained weights a command works on: a run folder (final weights or latest checkpoint) or a release registry.

Shared by ``kdseg-train evaluate`` and ``kdseg-train export``; it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["ModelSource", "resolve_model_source", "load_run_model"]


@dataclass
class ModelSource:
    """What to evaluate: a run folder (final weights or a checkpoint) or a release registry."""

    kind: str  # "run" | "registry"
    path: Path
    model_id: Optional[str] = None
    checkpoint: bool = False


def resolve_model_source(config: Dict[str, Any], model: Optional[Path], model_id: Optional[str] = None,
                         checkpoint: bool = False) -> ModelSource:
    """``--model`` (a registry JSON or a run folder) or the config's own run folder."""
    path = Path(model) if model is not None else Path(config["output"])
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"registry {path} does not exist")
        return ModelSource("registry", path, model_id)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist; train first (kdseg-train train/distill) or pass "
                                "--model RUN_FOLDER or --model release/registry.json")
    if not checkpoint and not (path / "final" / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} has no final/model.safetensors (the run has not finished); finish it with "
                                "--resume, or evaluate its latest checkpoint with --checkpoint")
    return ModelSource("run", path, model_id or (config.get("export") or {}).get("model_id"), checkpoint)


def load_run_model(source: ModelSource):
    """The PyTorch network of a run folder: ``final/`` or, with ``checkpoint``, the latest checkpoint."""
    from .checkpoint import latest_checkpoint, load_checkpoint
    from .export import load_safetensors_model
    from .trainer import build_model

    if not source.checkpoint:
        return load_safetensors_model(source.path / "final"), None
    import yaml

    path = latest_checkpoint(source.path / "checkpoints")
    if path is None:
        raise FileNotFoundError(f"{source.path / 'checkpoints'} holds no complete checkpoint")
    config = yaml.safe_load((source.path / "config.yaml").read_text(encoding="utf-8"))
    model = build_model(config["model"])
    ckpt = load_checkpoint(path)
    weights = {k[len("model."):]: v for k, v in ckpt.weights.items() if k.startswith("model.")}
    model.load_state_dict(weights)
    return model.eval(), ckpt.step
