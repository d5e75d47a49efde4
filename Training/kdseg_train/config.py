"""Run configuration: TransUNet defaults, YAML files (with ``base:`` includes) and ``--set`` overrides.

Every command reads one YAML file merged over :data:`DEFAULTS`; ``--set a.b=value``
strings are applied last (values parsed as YAML, so ``optim.lr=0.005``,
``train.amp=false`` and ``data.hu_window=[-100,240]`` have their natural types).
Unknown sections and keys are refused with the list of valid ones, because a typo
such as ``optim.learning_rate`` would otherwise silently train with the default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import yaml

from KDSegmentationLib.atomic_files import write_text_atomic
from KDSegmentationLib.inference.input_defaults import DEFAULT_HU_WINDOW, DEFAULT_INPUT_SIZE

from .errors import UsageError

__all__ = ["DEFAULTS", "ConfigError", "load_config", "apply_overrides", "validate_config", "save_config"]

DEFAULTS: Dict[str, Any] = {
    "model": {
        "name": "teacher-r50-b16",
        "num_classes": 9,
        "img_size": DEFAULT_INPUT_SIZE,
        "in_channels": 1,
        # mm per model pixel: slices are resampled to this spacing and centre-cropped/padded to
        # img_size (physical-size input, KDSegmentationLib.inference.model_grid); None: TransUNet's resize
        "pixel_spacing_mm": None,
        "pretrained": None,  # R50+ViT-B_16.npz (ImageNet-21k) for the teacher
        "overrides": {},  # architecture fields, e.g. {dropout: 0.0}
    },
    "data": {
        "train": [],
        "val": [],
        "batch_size": 24,  # global batch: split over the processes of a torchrun job
        "num_workers": 0,
        "augment": True,
        # transunet: rot90/flip or rotation, then resize (the paper) | tiny_data: zoom, rotation,
        # translation, elastic and intensity on the model grid (kdseg_train.data.tiny_data_augmentation)
        "augmentation": "transunet",
        "sampling": "uniform",  # uniform (epoch permutations) | class_balanced (kdseg_train.balanced_batch_plan)
        "canvas_margin": 32,  # tiny_data: model-grid pixels kept around the model input for zoom-out/translation
        "hu_window": list(DEFAULT_HU_WINDOW),
    },
    "loss": {"ce_weight": 0.5, "dice_weight": 0.5},
    "optim": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "poly_power": 0.9},
    "train": {
        "max_steps": 14000,  # 150 epochs over the 2211 Synapse training slices at batch 24
        "seed": 1234,
        "device": "auto",  # auto | cpu | cuda
        "amp": "auto",  # auto (on for CUDA) | true | false
        "threads": None,  # torch.set_num_threads; None keeps PyTorch's choice
        "checkpoint_every": 200,
        "keep_checkpoints": 2,
        "val_every": 500,
        "log_every": 1,
        "sync_batchnorm": True,  # DDP on GPUs: BatchNorm statistics over the global batch
        "tensorboard": True,
        "figures": True,
    },
    "distill": {"teacher": None},
    "evaluate": {
        "backend": "onnx",  # onnx: the Lib's pipeline (what Slicer runs) | pytorch: the run's weights
        "cases": None,  # list of case entries; None uses data.val
        "postprocess": False,  # the Lib's largest-component + hole filling (TransUNet evaluates raw argmax)
        "output": None,  # default <output>/evaluation
        "batch_size": 8,
    },
    "export": {
        "release": None,  # default <output>/release
        "model_id": None,
        "title": None,
        "version": "0.1.0",
        "description": None,
        "intended_use": "Research and demonstration use; not for clinical decisions.",
        "evaluation": None,  # default <evaluate.output>/evaluation.json when it exists
        "default": True,
        "training_data": None,  # free text for the model card; default lists data.train
    },
    "output": "runs/run",
}

# Sections whose keys are open: architecture overrides and distillation terms are
# validated by the code that consumes them (create_model, the distillation criterion).
_OPEN_SECTIONS = {("model", "overrides"), ("distill",)}


class ConfigError(UsageError):
    """A config file or override is malformed; the message names the key and the fix."""


def _merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(config: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``a.b.c=value`` strings; the value is parsed as YAML (numbers, booleans, lists, null)."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.lr=0.005")
        node = config
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is a value, not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from None
    return config


def validate_config(config: Dict[str, Any], path: str = "") -> None:
    """Refuse keys that :data:`DEFAULTS` does not know (outside the open sections)."""
    _check_keys(config, DEFAULTS, ())


def _check_keys(node: Dict[str, Any], reference: Dict[str, Any], where: tuple) -> None:
    if where in _OPEN_SECTIONS:
        return
    for key, value in node.items():
        if key not in reference:
            name = ".".join(where + (key,))
            valid = ", ".join(sorted(reference))
            raise ConfigError(f"unknown config key {name!r}; valid keys{' of ' + '.'.join(where) if where else ''}: "
                              f"{valid}")
        if isinstance(reference[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {'.'.join(where + (key,))!r} must be a section (a mapping), "
                                  f"got {value!r}")
            _check_keys(value, reference[key], where + (key,))


def load_config(path: Optional[Path], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Defaults, then the YAML file (after the files its ``base:`` names), then the overrides.

    Raises:
        FileNotFoundError: the YAML file (or a base) does not exist.
        ConfigError: malformed YAML, unknown keys or malformed overrides.
    """
    config = DEFAULTS
    if path is not None:
        config = _merge(DEFAULTS, _read_with_bases(Path(path)))
    config = apply_overrides(config, overrides)
    validate_config(config)
    return config


def _read_with_bases(path: Path, depth: int = 0) -> Dict[str, Any]:
    if depth > 8:
        raise ConfigError(f"config {path}: more than 8 nested base: files (a cycle?)")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} must be a YAML mapping of sections (model:, data:, ...)")
    bases = loaded.pop("base", None) or []
    merged: Dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, _read_with_bases(path.parent / base, depth + 1))
    return _merge(merged, loaded)


def save_config(config: Dict[str, Any], path: Path) -> Path:
    """Write the resolved config as YAML, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
