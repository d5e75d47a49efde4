"""Model registry: a JSON file (validated against ``registry.schema.json``) of model cards.

Each entry describes one deployable ONNX model: where its weights are and how to
verify them, what input it expects, which labels it outputs (names, colours,
SNOMED CT codes) and how it was trained and measured. Validation runs on load and
names the offending model and field path (``models[0].labels[3].color``), so a
broken registry never reaches inference.

Two layers check an entry: the Lib's own checks, which need nothing beyond the
standard library (3D Slicer does not ship ``jsonschema``) and cover every rule of
the schema plus the ones JSON Schema cannot express (label indices in order, unique
names, ``low < high``); then, when ``jsonschema`` is importable, the schema file
itself, so the two can never drift apart unnoticed.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..anatomy import ANATOMICAL_STRUCTURE, SYNAPSE_ORGANS, OrganLabel
from ..atomic_files import write_text_atomic
from ..errors import ModelNotFoundError, RegistryError
from ..resources import models_dir, registry_path
from .url_policy import is_registry_location

__all__ = ["InputSpec", "LabelInfo", "ModelCard", "ModelRegistry", "load_registry", "validate_registry_data",
           "url_is_allowed", "card_from_dict", "card_to_dict", "write_registry", "labels_from_anatomy", "schema_path",
           "REGISTRY_SCHEMA_VERSION", "READABLE_SCHEMA_VERSIONS", "NORMALIZATIONS"]

REGISTRY_SCHEMA_VERSION = 2
"""Written by this version. 2 added ``input.pixel_spacing_mm`` (physical-size input)."""
READABLE_SCHEMA_VERSIONS = (1, 2)
"""Read by this version: a version-1 card has no ``pixel_spacing_mm`` and means resize mode."""
NORMALIZATIONS = ("window_to_unit",)
SCHEMA_FILE_NAME = "registry.schema.json"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_ORIENTATION = re.compile(r"^[LRAPSI]{3}$")

_TOP_KEYS = {"$schema", "schema_version", "default_model_id", "models"}
_MODEL_REQUIRED = ("id", "title", "version", "description", "architecture", "file", "size_bytes", "sha256",
                   "urls", "input", "labels", "training", "metrics", "license", "intended_use")
_INPUT_REQUIRED = ("channels", "height", "width", "hu_window")
_INPUT_KEYS = set(_INPUT_REQUIRED) | {"normalization", "slice_orientation", "input_name", "output_name",
                                     "pixel_spacing_mm"}
_LABEL_KEYS = {"index", "name", "display_name", "color", "terminology"}
_CODED_KEYS = ("scheme", "code", "meaning")


@dataclass(frozen=True)
class InputSpec:
    """What the ONNX graph expects: (N, channels, height, width) float32 slices.

    Args:
        channels: input channels (1 for CT).
        height / width: slice size in pixels the graph was exported for.
        hu_window: (low, high) Hounsfield units mapped to [0, 1].
        normalization: how HU become model input; only "window_to_unit" exists.
        slice_orientation: orientation of the canonical volume the slices come from.
        input_name / output_name: ONNX tensor names.
        pixel_spacing_mm: mm per model pixel: slices are resampled to it and centred on the
            model grid (physical-size mode, ``inference.model_grid``); None: each slice's field
            of view is resized onto the grid (TransUNet; every schema-1 card).
    """

    channels: int
    height: int
    width: int
    hu_window: Tuple[float, float]
    normalization: str = "window_to_unit"
    slice_orientation: str = "LPS"
    input_name: str = "image"
    output_name: str = "logits"
    pixel_spacing_mm: Optional[float] = None


@dataclass(frozen=True)
class LabelInfo:
    """One output class.

    Args:
        index: channel of the logits and voxel value in the label map.
        name: machine name (``--structures``), unique within a model.
        display_name: name shown to users and given to Slicer segments.
        color: RGB 0-255.
        terminology: ``{"category": c, "type": t, "type_modifier": m or None}``, each
            ``{"scheme", "code", "meaning"}`` as Slicer's terminology uses them, or None.
    """

    index: int
    name: str
    display_name: str
    color: Tuple[int, int, int]
    terminology: Optional[Dict[str, Optional[Dict[str, str]]]] = None


@dataclass(frozen=True)
class ModelCard:
    """One registry entry (see ``Resources/Models/registry.schema.json`` for each field)."""

    id: str
    title: str
    version: str
    description: str
    architecture: str
    file: str
    size_bytes: int
    sha256: str
    urls: Tuple[str, ...]
    input: InputSpec
    labels: Tuple[LabelInfo, ...]
    training: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    license: str = ""
    intended_use: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def foreground_labels(self) -> List[LabelInfo]:
        """All labels except background (index 0), in index order."""
        return [label for label in self.labels if label.index != 0]

    def validated_structures(self, min_dice: float = 0.5) -> List[str]:
        """Structures whose mean validation Dice in this card is at least ``min_dice``, in label order.

        The figures are those ``kdseg-train export`` copies from ``kdseg-train evaluate``
        (``metrics.evaluation.summary``, TransUNet protocol); a card without measured metrics
        validates nothing. Self-tests expect plausible volumes only for these structures.
        """
        organs = self.metrics.get("evaluation", {}).get("summary", {}).get("transunet", {}).get("organs", {})
        validated = []
        for label in self.foreground_labels():
            dice = organs.get(label.name, {}).get("dice", {})
            if dice.get("n") and dice.get("mean") is not None and dice["mean"] >= min_dice:
                validated.append(label.name)
        return validated

    def label_by_name(self, name: str) -> LabelInfo:
        """The foreground label called ``name`` (case-insensitive; display names accepted too).

        Raises:
            ModelNotFoundError: no such structure; the message lists the valid names.
        """
        key = name.strip().lower()
        for label in self.foreground_labels():
            if key in (label.name.lower(), label.display_name.lower()):
                return label
        valid = ", ".join(label.name for label in self.foreground_labels())
        raise ModelNotFoundError(f"Unknown structure {name!r} for model {self.id}.",
                                 f"Valid structures: {valid}.")


def labels_from_anatomy(organs: Sequence[OrganLabel] = SYNAPSE_ORGANS) -> Tuple[LabelInfo, ...]:
    """Background plus ``organs`` with their colours and SNOMED CT codes (from :mod:`.anatomy`)."""
    labels = [LabelInfo(0, "background", "Background", (0, 0, 0), None)]
    for organ in organs:
        terminology = {
            "category": asdict(ANATOMICAL_STRUCTURE),
            "type": asdict(organ.type),
            "type_modifier": asdict(organ.type_modifier) if organ.type_modifier else None,
        }
        labels.append(LabelInfo(organ.index, organ.name, organ.display_name, organ.color, terminology))
    return tuple(labels)


# --- validation -------------------------------------------------------------------

class _Invalid(Exception):
    """One rule broken at ``path`` (turned into a RegistryError naming file and model)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _registry_error(problem: _Invalid, source: Optional[Path], model_id: Optional[str]) -> RegistryError:
    where = f" {source}" if source else ""
    model = f"model {model_id!r}, " if model_id else ""
    return RegistryError(f"Invalid model registry{where}: {model}field {problem.path}: {problem.problem}.",
                         "Fix the entry, or re-export the model with `kdseg-train export`.")


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _object(value: Any, path: str, required: Iterable[str] = (), allowed: Optional[Iterable[str]] = None
            ) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(path, f"expected an object, got {_short(value)}")
    for key in required:
        if key not in value:
            raise _Invalid(f"{path}.{key}" if path else key, "missing")
    if allowed is not None:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise _Invalid(f"{path}.{unknown[0]}" if path else unknown[0],
                           f"unknown field (allowed: {', '.join(sorted(allowed))})")
    return value


def _string(value: Any, path: str, non_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _Invalid(path, f"expected a string, got {_short(value)}")
    if non_empty and not value:
        raise _Invalid(path, "must not be empty")
    return value


def _positive_int(value: Any, path: str) -> int:
    if not _is_int(value) or value < 1:
        raise _Invalid(path, f"expected a positive integer, got {_short(value)}")
    return value


def url_is_allowed(url: str) -> bool:
    """A registry location: https://, file://, http:// to this machine, or a relative path.

    Relative paths resolve against the registry's folder and may not leave it.
    """
    return is_registry_location(url)


def _coded(value: Any, path: str) -> Dict[str, str]:
    data = _object(value, path, _CODED_KEYS, _CODED_KEYS)
    for key in _CODED_KEYS:
        text = _string(data[key], f"{path}.{key}", non_empty=True)
        if "^" in text or "~" in text:
            raise _Invalid(f"{path}.{key}", "must not contain '^' or '~' (Slicer terminology separators)")
    return {key: data[key] for key in _CODED_KEYS}


def _terminology(value: Any, path: str) -> Optional[Dict[str, Optional[Dict[str, str]]]]:
    if value is None:
        return None
    data = _object(value, path, ("category", "type"), ("category", "type", "type_modifier"))
    modifier = data.get("type_modifier")
    return {"category": _coded(data["category"], f"{path}.category"),
            "type": _coded(data["type"], f"{path}.type"),
            "type_modifier": None if modifier is None else _coded(modifier, f"{path}.type_modifier")}


def _input_spec(value: Any, path: str) -> InputSpec:
    spec = _object(value, path, _INPUT_REQUIRED, _INPUT_KEYS)
    channels, height, width = (_positive_int(spec[key], f"{path}.{key}") for key in ("channels", "height", "width"))
    window = spec["hu_window"]
    if (not isinstance(window, list) or len(window) != 2 or not all(_is_number(v) for v in window)
            or window[0] >= window[1]):
        raise _Invalid(f"{path}.hu_window", f"must be [low, high] numbers with low < high, got {_short(window)}")
    normalization = spec.get("normalization", "window_to_unit")
    if normalization not in NORMALIZATIONS:
        raise _Invalid(f"{path}.normalization", f"{_short(normalization)} is not one of {', '.join(NORMALIZATIONS)}")
    orientation = _string(spec.get("slice_orientation", "LPS"), f"{path}.slice_orientation")
    if not _ORIENTATION.match(orientation):
        raise _Invalid(f"{path}.slice_orientation", f"{orientation!r} is not a 3-letter orientation code like 'LPS'")
    input_name = _string(spec.get("input_name", "image"), f"{path}.input_name", non_empty=True)
    output_name = _string(spec.get("output_name", "logits"), f"{path}.output_name", non_empty=True)
    spacing = spec.get("pixel_spacing_mm")
    if spacing is not None and not (_is_number(spacing) and spacing > 0):
        raise _Invalid(f"{path}.pixel_spacing_mm", f"must be a positive number of mm per model pixel, got "
                       f"{_short(spacing)}")
    return InputSpec(channels, height, width, (float(window[0]), float(window[1])), normalization, orientation,
                     input_name, output_name, None if spacing is None else float(spacing))


def _label(value: Any, position: int, path: str) -> LabelInfo:
    raw = _object(value, path, ("index", "name", "color"), _LABEL_KEYS)
    index = raw["index"]
    if not _is_int(index) or index != position:
        raise _Invalid(f"{path}.index", f"expected {position} (labels are listed in index order from 0, "
                       f"background first), got {_short(index)}")
    name = _string(raw["name"], f"{path}.name", non_empty=True)
    display_name = _string(raw.get("display_name", name), f"{path}.display_name", non_empty=True)
    color = raw["color"]
    if not isinstance(color, list) or len(color) != 3 or not all(_is_int(c) and 0 <= c <= 255 for c in color):
        raise _Invalid(f"{path}.color", f"must be three integers 0-255, got {_short(color)}")
    return LabelInfo(index, name, display_name, (color[0], color[1], color[2]),
                     _terminology(raw.get("terminology"), f"{path}.terminology"))


def _card(data: Any, path: str) -> ModelCard:
    raw = _object(data, path, ("id",))
    model_id = _string(raw["id"], f"{path}.id")
    if not _ID.match(model_id):
        raise _Invalid(f"{path}.id", f"{model_id!r} must be lowercase letters, digits, '.', '_' or '-'")
    raw = _object(data, path, _MODEL_REQUIRED, _MODEL_REQUIRED)
    for key in ("title", "version", "description", "architecture", "license", "intended_use"):
        _string(raw[key], f"{path}.{key}")
    file_name = _string(raw["file"], f"{path}.file", non_empty=True)
    if "/" in file_name or "\\" in file_name or not file_name.endswith(".onnx") or file_name == ".onnx":
        raise _Invalid(f"{path}.file", f"{file_name!r} must be a bare .onnx file name (no folders)")
    size = _positive_int(raw["size_bytes"], f"{path}.size_bytes")
    sha = _string(raw["sha256"], f"{path}.sha256")
    if not _SHA256.match(sha):
        raise _Invalid(f"{path}.sha256", f"must be 64 lowercase hex digits, got {_short(sha)}")
    urls = raw["urls"]
    if not isinstance(urls, list) or not urls:
        raise _Invalid(f"{path}.urls", "must list at least one location of the file")
    for i, url in enumerate(urls):
        if not isinstance(url, str) or not url_is_allowed(url):
            raise _Invalid(f"{path}.urls[{i}]", f"{_short(url)} must be an https:// or file:// URL, http:// only "
                           "to localhost, or a path relative to the registry folder")
    spec = _input_spec(raw["input"], f"{path}.input")
    raw_labels = raw["labels"]
    if not isinstance(raw_labels, list) or len(raw_labels) < 2:
        raise _Invalid(f"{path}.labels", "must list background (index 0) and at least one structure")
    labels = [_label(value, i, f"{path}.labels[{i}]") for i, value in enumerate(raw_labels)]
    seen: Dict[str, int] = {}
    for label in labels:
        if label.name in seen:
            raise _Invalid(f"{path}.labels[{label.index}].name",
                           f"{label.name!r} is already the name of labels[{seen[label.name]}]")
        seen[label.name] = label.index
    for key in ("training", "metrics"):
        _object(raw[key], f"{path}.{key}")
    return ModelCard(model_id, raw["title"], raw["version"], raw["description"], raw["architecture"], file_name,
                     size, sha, tuple(urls), spec, tuple(labels), dict(raw["training"]), dict(raw["metrics"]),
                     raw["license"], raw["intended_use"])


def _model_id_at(data: Any, path: Sequence[Any]) -> Optional[str]:
    """The id of the model a JSON path points into (``models[i]...``), if readable."""
    if len(path) >= 2 and path[0] == "models" and isinstance(data, dict) and isinstance(data.get("models"), list):
        index = path[1]
        if isinstance(index, int) and 0 <= index < len(data["models"]):
            entry = data["models"][index]
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                return entry["id"]
    return None


def _format_path(parts: Sequence[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(registry)"


def schema_path() -> Path:
    """The registry's JSON Schema shipped with the extension."""
    return models_dir() / SCHEMA_FILE_NAME


def _schema_check(data: Any, source: Optional[Path]) -> None:
    """Validate against the JSON Schema file when ``jsonschema`` is importable (it is optional at runtime).

    The bundled registry is skipped: the test suite validates it against the schema, and
    importing ``jsonschema`` would add about a tenth of a second to every ``kdseg`` start.
    """
    if source is not None and Path(source).resolve() == registry_path().resolve():
        return
    try:
        import jsonschema
    except ImportError:
        return
    path = schema_path()
    if not path.is_file():
        return  # the Lib's own checks already ran; a missing schema file is a packaging matter
    schema = json.loads(path.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    error = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(data))
    if error is not None:
        parts = list(error.absolute_path)
        problem = _Invalid(_format_path(parts), f"{error.message[:200]} (schema rule {error.validator!r})")
        raise _registry_error(problem, source, _model_id_at(data, parts))


def validate_registry_data(data: Any, source: Optional[Path] = None) -> Tuple[Dict[str, ModelCard], Optional[str]]:
    """Check a parsed registry and build its cards.

    Args:
        data: the parsed JSON document.
        source: the file it came from (named in errors), or None.

    Returns:
        (cards by id in file order, default model id or None).

    Raises:
        RegistryError: naming the file, the model id and the field path, e.g.
            ``model 'x', field models[0].labels[3].color: must be three integers 0-255``.
    """
    models: Dict[str, ModelCard] = {}
    model_id: Optional[str] = None
    try:
        top = _object(data, "", ("schema_version", "models"), _TOP_KEYS)
        version = top["schema_version"]
        if version not in READABLE_SCHEMA_VERSIONS or isinstance(version, bool):
            raise _Invalid("schema_version", f"expected one of {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}, got "
                           f"{_short(version)} (this KDSegmentation version reads registry schema versions "
                           f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; update KDSegmentation for newer ones)")
        if not isinstance(top["models"], list):
            raise _Invalid("models", f"expected a list, got {_short(top['models'])}")
        for i, raw in enumerate(top["models"]):
            model_id = _model_id_at(top, ["models", i])
            card = _card(raw, f"models[{i}]")
            if version < 2 and card.input.pixel_spacing_mm is not None:
                raise _Invalid(f"models[{i}].input.pixel_spacing_mm", "needs schema_version 2 (version 1 cards are "
                               "resize mode); set schema_version to 2")
            if card.id in models:
                raise _Invalid(f"models[{i}].id", f"duplicate id {card.id!r}")
            models[card.id] = card
        model_id = None
        default = top.get("default_model_id")
        if default is not None and (not isinstance(default, str) or default not in models):
            raise _Invalid("default_model_id", f"{_short(default)} is not the id of a listed model"
                           + (f" ({', '.join(models)})" if models else " (the registry lists none)"))
    except _Invalid as problem:
        raise _registry_error(problem, source, model_id) from None
    _schema_check(data, source)
    return models, default


def card_from_dict(data: Any, where: str = "model", registry: Optional[Path] = None) -> ModelCard:
    """Validate one entry and build its :class:`ModelCard`; errors name ``where`` + the field.

    The JSON Schema layer applies to whole registries (:func:`load_registry`); the
    Lib's own checks here cover every schema rule.
    """
    try:
        return _card(data, where)
    except _Invalid as problem:
        model_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
        raise _registry_error(problem, registry, model_id) from None


def card_to_dict(card: ModelCard) -> Dict[str, Any]:
    """The JSON form of a card (inverse of :func:`card_from_dict`)."""
    data = asdict(card)
    data["urls"] = list(card.urls)
    data["input"]["hu_window"] = list(card.input.hu_window)
    if card.input.pixel_spacing_mm is None:
        del data["input"]["pixel_spacing_mm"]  # resize mode: the field is absent, as in schema 1
    data["labels"] = [dict(asdict(label), color=list(label.color)) for label in card.labels]
    return data


# --- registry -----------------------------------------------------------------------

@dataclass
class ModelRegistry:
    """A loaded registry. ``directory`` is where relative URLs and bundled files resolve."""

    path: Path
    models: Dict[str, ModelCard]
    default_model_id: Optional[str] = None

    @property
    def directory(self) -> Path:
        return Path(self.path).parent

    def ids(self) -> List[str]:
        return list(self.models)

    def get(self, model_id: Optional[str] = None) -> ModelCard:
        """The card for ``model_id`` (None: the default model, else the first one listed).

        Raises:
            ModelNotFoundError: the registry lists no model, or ``model_id`` is unknown
                (the message lists the known ids).
        """
        if not self.models:
            raise ModelNotFoundError(
                f"No trained model is installed: the model registry {self.path} lists no models.",
                "Train and export one with `kdseg-train` (see Training/README.md) and pass its "
                "`--registry <release folder>/registry.json`, or install a release that bundles a trained model.")
        if model_id is None:
            model_id = self.default_model_id or next(iter(self.models))
        if model_id not in self.models:
            raise ModelNotFoundError(f"Unknown model id {model_id!r} in {self.path}.",
                                     f"Known models: {', '.join(self.models)} (see `kdseg models`).")
        return self.models[model_id]


def load_registry(path: Union[str, Path, None] = None) -> ModelRegistry:
    """Read and validate a registry JSON (default: :func:`KDSegmentationLib.resources.registry_path`).

    Raises:
        RegistryError: the file is missing, not JSON, or an entry is invalid (naming the field).
    """
    path = Path(path) if path is not None else registry_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"Model registry not found: {path}.",
                            "Reinstall the extension, or pass an existing registry.json with --registry.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"Cannot read model registry {path}: {exc}.",
                            "Check the file's permissions, or restore it from the release.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"Model registry {path} is not valid JSON (line {exc.lineno}: {exc.msg}).",
                            "Fix the file or restore it from the release.") from None
    models, default = validate_registry_data(data, path)
    return ModelRegistry(path, models, default)


def write_registry(path: Union[str, Path], cards: Iterable[ModelCard],
                   default_model_id: Optional[str] = None) -> Path:
    """Validate ``cards`` and write them as a registry, atomically (temporary file + rename).

    Raises:
        RegistryError: a card would not load back (nothing is written).
    """
    path = Path(path)
    data = {"$schema": f"./{SCHEMA_FILE_NAME}", "schema_version": REGISTRY_SCHEMA_VERSION,
            "default_model_id": default_model_id, "models": [card_to_dict(card) for card in cards]}
    # Round-trip through JSON first so the check sees exactly what a reader will.
    text = json.dumps(data, indent=2) + "\n"
    validate_registry_data(json.loads(text), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text)
