"""YAML run configuration with TransUNet defaults and ``--set key.path=value`` overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import yaml

__all__ = ["DEFAULTS", "load_config", "apply_overrides", "save_config"]

DEFAULTS: Dict[str, Any] = {
    "model": {"name": "teacher-r50-b16", "num_classes": 9, "img_size": 224},
    "data": {"train": [], "val": [], "batch_size": 24, "augment": True, "hu_window": [-125, 275]},
    "optim": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "poly_power": 0.9},
    "train": {"max_steps": 14000, "checkpoint_every": 200, "val_every": 500, "seed": 1234, "threads": None,
              "amp": True},
    "distill": {"teacher": None, "pixel_kd": {"weight": 0.0, "temperature": 4.0},
                "attention_kd": {"weight": 0.0}},
    "output": "runs/run",
}


def _merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(config: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as YAML: numbers, lists, null...)."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        node = config
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return config


def load_config(path: Optional[Path], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Defaults, then the YAML file (after its ``base:`` files), then the overrides."""
    config = DEFAULTS
    if path is not None:
        config = _merge(DEFAULTS, _read_with_bases(Path(path)))
    return apply_overrides(config, overrides)


def _read_with_bases(path: Path, depth: int = 0) -> Dict[str, Any]:
    """A YAML file merged over the files its ``base:`` entry names (relative to it)."""
    if depth > 8:
        raise ValueError(f"config {path}: too many nested base files")
    with open(path, encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"config {path} must be a mapping")
    bases = loaded.pop("base", None) or []
    merged: Dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, _read_with_bases(path.parent / base, depth + 1))
    return _merge(merged, loaded)


def save_config(config: Dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
