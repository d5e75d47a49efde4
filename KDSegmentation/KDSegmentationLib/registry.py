"""Model registry: a JSON file (validated against ``registry.schema.json``) of model cards.

Each entry describes one deployable ONNX model: where its weights are and how to
verify them, what input it expects, which labels it outputs (names, colours,
SNOMED CT codes) and how it was trained and measured. Validation runs on load and
names the offending model and field, so a broken registry never reaches inference.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .anatomy import ANATOMICAL_STRUCTURE, SYNAPSE_ORGANS, OrganLabel
from .errors import ModelNotFoundError, RegistryError
from .resources import registry_path

__all__ = ["InputSpec", "LabelInfo", "ModelCard", "ModelRegistry", "load_registry", "card_from_dict",
           "card_to_dict", "write_registry", "labels_from_anatomy", "REGISTRY_SCHEMA_VERSION"]

REGISTRY_SCHEMA_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
NORMALIZATIONS = ("window_to_unit",)


@dataclass(frozen=True)
class InputSpec:
    """What the ONNX graph expects: (N, channels, height, width) float32 slices."""

    channels: int
    height: int
    width: int
    hu_window: Tuple[float, float]
    normalization: str = "window_to_unit"
    slice_orientation: str = "LPS"
    input_name: str = "image"
    output_name: str = "logits"


@dataclass(frozen=True)
class LabelInfo:
    """One output class. ``terminology`` holds category/type/type_modifier codes or is None."""

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
        return [label for label in self.labels if label.index != 0]

    def label_by_name(self, name: str) -> LabelInfo:
        """The label called ``name`` (case-insensitive; display names accepted too)."""
        key = name.strip().lower()
        for label in self.foreground_labels():
            if key in (label.name.lower(), label.display_name.lower()):
                return label
        valid = ", ".join(label.name for label in self.foreground_labels())
        raise ModelNotFoundError(f"Unknown structure {name!r} for model {self.id}.",
                                 f"Valid structures: {valid}.")


def labels_from_anatomy(organs: Sequence[OrganLabel] = SYNAPSE_ORGANS) -> Tuple[LabelInfo, ...]:
    """Background plus ``organs`` with their colours and SNOMED CT codes."""
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

def _fail(where: str, problem: str, registry: Optional[Path]) -> RegistryError:
    source = f" in {registry}" if registry else ""
    return RegistryError(f"Invalid model registry entry{source}: {where}: {problem}.",
                         "Fix the entry or re-export the model with `kdseg-train export`.")


def _require(data: Dict[str, Any], key: str, kind: Union[type, Tuple[type, ...]], where: str,
             registry: Optional[Path]) -> Any:
    if key not in data:
        raise _fail(f"{where}.{key}", "missing", registry)
    value = data[key]
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _fail(f"{where}.{key}", f"expected {getattr(kind, '__name__', kind)}, got a boolean", registry)
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(f"{where}.{key}", f"expected {name}, got {type(value).__name__}", registry)
    return value


def _coded(value: Any, where: str, registry: Optional[Path]) -> Optional[Dict[str, str]]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(where, "expected an object with scheme, code, meaning", registry)
    for key in ("scheme", "code", "meaning"):
        if not isinstance(value.get(key), str) or not value[key]:
            raise _fail(f"{where}.{key}", "missing or empty", registry)
        if "^" in value[key] or "~" in value[key]:
            raise _fail(f"{where}.{key}", "must not contain '^' or '~' (terminology separators)", registry)
    return {k: value[k] for k in ("scheme", "code", "meaning")}


def _url_ok(url: str) -> bool:
    if "://" not in url:
        return not url.startswith("/") and ".." not in Path(url).parts
    return url.startswith(("https://", "file://", "http://127.0.0.1", "http://localhost", "http://[::1]"))


def card_from_dict(data: Any, where: str = "model", registry: Optional[Path] = None) -> ModelCard:
    """Validate one entry and build its :class:`ModelCard`; errors name ``where`` + field."""
    if not isinstance(data, dict):
        raise _fail(where, "expected an object", registry)
    model_id = _require(data, "id", str, where, registry)
    if not _ID.match(model_id):
        raise _fail(f"{where}.id", f"{model_id!r} must be lowercase letters, digits, '.', '_' or '-'", registry)
    where = f"{where} ({model_id})"
    for key in ("title", "version", "description", "architecture", "file", "license", "intended_use"):
        _require(data, key, str, where, registry)
    if Path(data["file"]).name != data["file"] or not data["file"].endswith(".onnx"):
        raise _fail(f"{where}.file", "must be a bare .onnx file name", registry)
    size = _require(data, "size_bytes", int, where, registry)
    if size <= 0:
        raise _fail(f"{where}.size_bytes", "must be positive", registry)
    sha = _require(data, "sha256", str, where, registry)
    if not _SHA256.match(sha):
        raise _fail(f"{where}.sha256", "must be 64 lowercase hex digits", registry)
    urls = _require(data, "urls", list, where, registry)
    if not urls:
        raise _fail(f"{where}.urls", "must list at least one location", registry)
    for i, url in enumerate(urls):
        if not isinstance(url, str) or not _url_ok(url):
            raise _fail(f"{where}.urls[{i}]", f"{url!r} must be https://, file://, http://localhost "
                        "or a path relative to the registry", registry)
    spec = _require(data, "input", dict, where, registry)
    w_in = f"{where}.input"
    for key in ("channels", "height", "width"):
        value = _require(spec, key, int, w_in, registry)
        if value <= 0:
            raise _fail(f"{w_in}.{key}", "must be positive", registry)
    window = _require(spec, "hu_window", list, w_in, registry)
    if len(window) != 2 or not all(isinstance(v, (int, float)) for v in window) or window[0] >= window[1]:
        raise _fail(f"{w_in}.hu_window", "must be [low, high] with low < high", registry)
    normalization = spec.get("normalization", "window_to_unit")
    if normalization not in NORMALIZATIONS:
        raise _fail(f"{w_in}.normalization", f"{normalization!r} is not one of {NORMALIZATIONS}", registry)
    input_spec = InputSpec(spec["channels"], spec["height"], spec["width"], (float(window[0]), float(window[1])),
                           normalization, str(spec.get("slice_orientation", "LPS")),
                           str(spec.get("input_name", "image")), str(spec.get("output_name", "logits")))
    raw_labels = _require(data, "labels", list, where, registry)
    labels: List[LabelInfo] = []
    for i, raw in enumerate(raw_labels):
        w_l = f"{where}.labels[{i}]"
        if not isinstance(raw, dict):
            raise _fail(w_l, "expected an object", registry)
        index = _require(raw, "index", int, w_l, registry)
        if index != i:
            raise _fail(f"{w_l}.index", f"expected {i} (labels are listed in index order from 0)", registry)
        name = _require(raw, "name", str, w_l, registry)
        color = _require(raw, "color", list, w_l, registry)
        if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
            raise _fail(f"{w_l}.color", "must be three integers 0-255", registry)
        terminology = raw.get("terminology")
        if terminology is not None:
            if not isinstance(terminology, dict):
                raise _fail(f"{w_l}.terminology", "expected an object", registry)
            terminology = {key: _coded(terminology.get(key), f"{w_l}.terminology.{key}", registry)
                           for key in ("category", "type", "type_modifier")}
            if terminology["category"] is None or terminology["type"] is None:
                raise _fail(f"{w_l}.terminology", "needs category and type", registry)
        labels.append(LabelInfo(index, name, str(raw.get("display_name", name)), tuple(color), terminology))
    if len(labels) < 2:
        raise _fail(f"{where}.labels", "needs background and at least one structure", registry)
    names = [label.name for label in labels]
    if len(set(names)) != len(names):
        raise _fail(f"{where}.labels", "label names must be unique", registry)
    for key in ("training", "metrics"):
        if not isinstance(data.get(key, {}), dict):
            raise _fail(f"{where}.{key}", "expected an object", registry)
    return ModelCard(model_id, data["title"], data["version"], data["description"], data["architecture"],
                     data["file"], size, sha, tuple(urls), input_spec, tuple(labels),
                     dict(data.get("training", {})), dict(data.get("metrics", {})), data["license"],
                     data["intended_use"])


def card_to_dict(card: ModelCard) -> Dict[str, Any]:
    """The JSON form of a card (inverse of :func:`card_from_dict`)."""
    data = asdict(card)
    data["urls"] = list(card.urls)
    data["input"]["hu_window"] = list(card.input.hu_window)
    data["labels"] = [dict(asdict(label), color=list(label.color)) for label in card.labels]
    return data


# --- registry -----------------------------------------------------------------------

@dataclass
class ModelRegistry:
    """Loaded registry. ``directory`` is where relative URLs and bundled files resolve."""

    path: Path
    models: Dict[str, ModelCard]
    default_model_id: Optional[str] = None

    @property
    def directory(self) -> Path:
        return self.path.parent

    def ids(self) -> List[str]:
        return list(self.models)

    def get(self, model_id: Optional[str] = None) -> ModelCard:
        """The card for ``model_id`` (None: the default model)."""
        if not self.models:
            raise ModelNotFoundError(
                f"No trained model is installed: the registry {self.path} lists no models.",
                "Train and export one with `kdseg-train` (see Training/README.md) and pass "
                "`--registry <release>/registry.json`, or install a release that bundles one.")
        if model_id is None:
            model_id = self.default_model_id or next(iter(self.models))
        if model_id not in self.models:
            raise ModelNotFoundError(f"Unknown model id {model_id!r}.",
                                     f"Known models: {', '.join(self.models)} (see `kdseg models`).")
        return self.models[model_id]


def load_registry(path: Union[str, Path, None] = None) -> ModelRegistry:
    """Read and validate a registry JSON (default: the bundled ``Resources/Models/registry.json``)."""
    path = Path(path) if path is not None else registry_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"Model registry not found: {path}.",
                            "Reinstall the extension, or pass an existing file with --registry.") from None
    except OSError as exc:
        raise RegistryError(f"Cannot read model registry {path}: {exc.strerror}.", None) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"Model registry {path} is not valid JSON (line {exc.lineno}: {exc.msg}).",
                            "Fix the file or restore it from the release.") from None
    if not isinstance(data, dict):
        raise _fail("registry", "expected a JSON object", path)
    version = data.get("schema_version")
    if version != REGISTRY_SCHEMA_VERSION:
        raise _fail("schema_version", f"expected {REGISTRY_SCHEMA_VERSION}, got {version!r}", path)
    raw_models = data.get("models")
    if not isinstance(raw_models, list):
        raise _fail("models", "expected a list", path)
    models: Dict[str, ModelCard] = {}
    for i, raw in enumerate(raw_models):
        card = card_from_dict(raw, f"models[{i}]", path)
        if card.id in models:
            raise _fail(f"models[{i}].id", f"duplicate id {card.id!r}", path)
        models[card.id] = card
    default = data.get("default_model_id")
    if default is not None and default not in models:
        raise _fail("default_model_id", f"{default!r} is not one of the listed models", path)
    return ModelRegistry(path, models, default)


def write_registry(path: Union[str, Path], cards: Iterable[ModelCard],
                   default_model_id: Optional[str] = None) -> Path:
    """Write a registry atomically (temporary file + rename)."""
    path = Path(path)
    cards = list(cards)
    data = {"$schema": "./registry.schema.json", "schema_version": REGISTRY_SCHEMA_VERSION,
            "default_model_id": default_model_id, "models": [card_to_dict(c) for c in cards]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
