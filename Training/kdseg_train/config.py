"""Run configuration: typed sections with their defaults, YAML files (with ``base:`` includes) and ``--set`` overrides.

The sections are dataclasses (:class:`RunConfig` and one class per section below): each
default is written once, as a field default, and :data:`DEFAULTS` is derived from them.
Every command reads one YAML file merged over the defaults; ``--set a.b=value`` strings
are applied last (values parsed as YAML, so ``optim.lr=0.005``, ``train.amp=false`` and
``data.hu_window=[-100,240]`` have their natural types). Unknown sections and keys are
refused with the key's path and the valid ones (``train.max_stepz``), because a typo such
as ``optim.learning_rate`` would otherwise silently train with the default; a value of
the wrong type is refused with its path too.

:func:`load_config` returns the merged plain mapping (what ``config.yaml`` of a run
holds); :func:`load_run_config` and :meth:`RunConfig.from_dict` give the typed view.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import yaml

from KDSegmentationLib.atomic_files import write_text_atomic
from KDSegmentationLib.inference.input_defaults import DEFAULT_HU_WINDOW, DEFAULT_INPUT_SIZE

from .errors import UsageError

__all__ = ["DEFAULTS", "ConfigError", "RunConfig", "ModelSection", "DataSection", "LossSection", "OptimSection",
           "TrainSection", "EvaluateSection", "ExportSection", "load_config", "load_run_config", "apply_overrides",
           "validate_config", "save_config"]


@dataclass
class ModelSection:
    """``model:`` the network to build (``kdseg_train.models.create_model``)."""

    name: str = "teacher-r50-b16"
    num_classes: int = 9
    img_size: int = DEFAULT_INPUT_SIZE
    in_channels: int = 1
    # mm per model pixel: slices are resampled to this spacing and centre-cropped/padded to
    # img_size (physical-size input, KDSegmentationLib.inference.model_grid); None: TransUNet's resize
    pixel_spacing_mm: Optional[float] = None
    pretrained: Optional[str] = None  # R50+ViT-B_16.npz (ImageNet-21k) for the teacher
    overrides: Dict[str, Any] = field(default_factory=dict)  # architecture fields, e.g. {dropout: 0.0}


@dataclass
class DataSection:
    """``data:`` training and validation cases and how slices are drawn from them."""

    train: List[Any] = field(default_factory=list)
    val: List[Any] = field(default_factory=list)
    batch_size: int = 24  # global batch: split over the processes of a torchrun job
    num_workers: int = 0
    augment: bool = True
    # transunet: rot90/flip or rotation, then resize (the paper) | tiny_data: zoom, rotation,
    # translation, elastic and intensity on the model grid (kdseg_train.data.tiny_data_augmentation)
    augmentation: str = "transunet"
    sampling: str = "uniform"  # uniform (epoch permutations) | class_balanced (kdseg_train.balanced_batch_plan)
    canvas_margin: int = 32  # tiny_data: model-grid pixels kept around the model input for zoom-out/translation
    hu_window: List[float] = field(default_factory=lambda: list(DEFAULT_HU_WINDOW))


@dataclass
class LossSection:
    """``loss:`` the segmentation loss (cross-entropy + Dice, as TransUNet)."""

    ce_weight: float = 0.5
    dice_weight: float = 0.5


@dataclass
class OptimSection:
    """``optim:`` SGD with a polynomial learning-rate decay."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9


@dataclass
class TrainSection:
    """``train:`` the loop: length, seed, device, checkpoints, logs."""

    max_steps: int = 14000  # 150 epochs over the 2211 Synapse training slices at batch 24
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda
    amp: Union[bool, str] = "auto"  # auto (on for CUDA) | true | false
    threads: Optional[int] = None  # torch.set_num_threads; None keeps PyTorch's choice
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    val_every: int = 500
    log_every: int = 1
    sync_batchnorm: bool = True  # DDP on GPUs: BatchNorm statistics over the global batch
    # After the last step, recompute BatchNorm statistics over the training slices without
    # augmentation (kdseg_train.batchnorm_recalibration); needs data.augment-able CT slices.
    recalibrate_batchnorm: bool = False
    tensorboard: bool = True
    figures: bool = True


@dataclass
class EvaluateSection:
    """``evaluate:`` ``kdseg-train evaluate``."""

    backend: str = "onnx"  # onnx: the Lib's pipeline (what Slicer runs) | pytorch: the run's weights
    cases: Optional[List[Any]] = None  # list of case entries; None uses data.val
    postprocess: bool = False  # the Lib's largest-component + hole filling (TransUNet evaluates raw argmax)
    output: Optional[str] = None  # default <output>/evaluation
    batch_size: int = 8


@dataclass
class ExportSection:
    """``export:`` ``kdseg-train export``: the release folder and the model card's text."""

    release: Optional[str] = None  # default <output>/release
    model_id: Optional[str] = None
    title: Optional[str] = None
    version: str = "0.1.0"
    description: Optional[str] = None
    intended_use: str = "Research and demonstration use; not for clinical decisions."
    evaluation: Optional[str] = None  # default <evaluate.output>/evaluation.json when it exists
    default: bool = True
    training_data: Optional[str] = None  # free text for the model card; default lists data.train


@dataclass
class RunConfig:
    """A whole run: one field per YAML section, in the order ``config.yaml`` lists them.

    ``distill`` stays a mapping: ``teacher`` plus one entry per distillation term, whose
    options are typed and checked by the term's registration in
    :mod:`kdseg_train.losses.distillation`.
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    distill: Dict[str, Any] = field(default_factory=lambda: {"teacher": None})
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    export: ExportSection = field(default_factory=ExportSection)
    output: str = "runs/run"

    def to_dict(self) -> Dict[str, Any]:
        """The plain mapping (what :func:`load_config` returns and ``config.yaml`` holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: Dict[str, Any]) -> "RunConfig":
        """The typed view of a mapping; missing keys take their defaults.

        Raises:
            ConfigError: an unknown key or a value of the wrong type, named by its path.
        """
        validate_config(config)
        return _build(cls, config, ())


class ConfigError(UsageError):
    """A config file or override is malformed; the message names the key and the fix."""


DEFAULTS: Dict[str, Any] = RunConfig().to_dict()
"""Every default, as a plain mapping (derived from the dataclasses above)."""

# Mappings whose keys are open: architecture overrides and distillation terms are
# validated by the code that consumes them (create_model, the distillation criterion).
_OPEN_SECTIONS = {("model", "overrides"), ("distill",)}


def _build(cls: type, values: Dict[str, Any], where: tuple) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        hint = hints[f.name]
        kwargs[f.name] = (_build(hint, value, where + (f.name,)) if dataclasses.is_dataclass(hint)
                          else copy.deepcopy(value))
    return cls(**kwargs)


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
    """Refuse keys the sections do not define (outside the open mappings) and values of the wrong type."""
    _check_section(config, RunConfig, ())


def _check_section(node: Dict[str, Any], cls: type, where: tuple) -> None:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key, value in node.items():
        if key not in hints:
            name = ".".join(where + (key,))
            valid = ", ".join(sorted(known))
            raise ConfigError(f"unknown config key {name!r}; valid keys{' of ' + '.'.join(where) if where else ''}: "
                              f"{valid}")
        hint = hints[key]
        path = where + (key,)
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {'.'.join(path)!r} must be a section (a mapping), got {value!r}")
            _check_section(value, hint, path)
        elif path in _OPEN_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {'.'.join(path)!r} must be a section (a mapping), got {value!r}")
        elif not _matches(value, hint):
            raise ConfigError(f"config key {'.'.join(path)!r} must be {_describe(hint)}, got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    """Does a YAML value fit the annotation? (ints are accepted where floats are expected)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Union:
        return any(_matches(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, List):
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin in (dict, Dict):
        return isinstance(value, dict)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin is Union:
        return " or ".join(_describe(arm) for arm in typing.get_args(hint))
    if origin in (list, List):
        (item,) = typing.get_args(hint) or (Any,)
        return "a list" if item is Any else f"a list of {_describe(item).replace('an ', '').replace('a ', '')}s"
    if origin in (dict, Dict):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def load_config(path: Optional[Path], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Defaults, then the YAML file (after the files its ``base:`` names), then the overrides.

    Raises:
        FileNotFoundError: the YAML file (or a base) does not exist.
        ConfigError: malformed YAML, unknown keys, values of the wrong type or malformed overrides.
    """
    config = DEFAULTS
    if path is not None:
        config = _merge(DEFAULTS, _read_with_bases(Path(path)))
    config = apply_overrides(config, overrides)
    validate_config(config)
    return config


def load_run_config(path: Optional[Path], overrides: Iterable[str] = ()) -> RunConfig:
    """:func:`load_config` as a typed :class:`RunConfig`."""
    return RunConfig.from_dict(load_config(path, overrides))


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
