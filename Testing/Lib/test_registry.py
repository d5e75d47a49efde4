"""Model registry: the bundled file, schema validation and errors naming model and field."""

import dataclasses
import json
import os
import stat
import sys

import jsonschema
import pytest

from KDSegmentationLib.weights import model_registry as registry_module
from KDSegmentationLib.errors import ModelNotFoundError, RegistryError
from KDSegmentationLib.weights.model_registry import (card_from_dict, card_to_dict, labels_from_anatomy, load_registry,
                                        schema_path, url_is_allowed, write_registry)
from KDSegmentationLib.resources import registry_path


def _schema():
    return json.loads(schema_path().read_text(encoding="utf-8"))


def _rewrite(path, mutate):
    data = json.loads(path.read_text(encoding="utf-8"))
    mutate(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return data


@pytest.fixture(params=["with jsonschema", "without jsonschema"])
def jsonschema_presence(request, monkeypatch):
    """Run a test with and without jsonschema importable (3D Slicer does not ship it)."""
    if request.param == "without jsonschema":
        monkeypatch.setitem(sys.modules, "jsonschema", None)  # `import jsonschema` raises ImportError
    return request.param


def test_bundled_registry_is_valid_and_holds_no_untrained_model():
    data = json.loads(registry_path().read_text(encoding="utf-8"))
    jsonschema.validate(data, _schema())
    registry = load_registry()
    assert registry.path == registry_path()
    for card in registry.models.values():
        assert card.intended_use, "every shipped model states its intended use"
        assert "untrained" not in (card.id + card.title + card.intended_use).lower()
    if not registry.models:
        assert registry.default_model_id is None
        with pytest.raises(ModelNotFoundError) as info:
            registry.get()
        assert "No trained model is installed" in info.value.message
        assert "kdseg-train" in info.value.hint and "--registry" in info.value.hint


def test_written_registry_matches_schema_and_round_trips(plumbing_registry, plumbing_size):
    jsonschema.validate(json.loads(plumbing_registry.read_text(encoding="utf-8")), _schema())
    registry = load_registry(plumbing_registry)
    card = registry.get()
    assert registry.ids() == ["plumbing"] and registry.directory == plumbing_registry.parent
    assert card_from_dict(card_to_dict(card)) == card
    assert card.num_classes == 9 and card.labels[0].name == "background"
    assert (card.input.height, card.input.width, card.input.hu_window) == (plumbing_size, plumbing_size,
                                                                         (-125.0, 275.0))
    assert [label.name for label in card.foreground_labels()] == [
        "aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach"]
    left = card.label_by_name("Left kidney")
    assert left.index == 3 and left.color == (212, 126, 151)
    assert left.terminology["type"] == {"scheme": "SCT", "code": "64033007", "meaning": "Kidney"}
    assert left.terminology["type_modifier"] == {"scheme": "SCT", "code": "7771000", "meaning": "Left"}
    assert card.label_by_name("LIVER").terminology["type_modifier"] is None


# (mutation of models[0], field path the error must name, whether JSON Schema can express the rule)
INVALID_ENTRIES = [
    (lambda e: e.pop("sha256"), "models[0].sha256: missing", True),
    (lambda e: e.update(sha256="abc"), "models[0].sha256", True),
    (lambda e: e.update(sha256="A" * 64), "models[0].sha256", True),
    (lambda e: e.update(size_bytes="12"), "models[0].size_bytes", True),
    (lambda e: e.update(size_bytes=0), "models[0].size_bytes", True),
    (lambda e: e.update(size_bytes=True), "models[0].size_bytes", True),
    (lambda e: e.update(file="sub/model.onnx"), "models[0].file", True),
    (lambda e: e.update(file="model.pt"), "models[0].file", True),
    (lambda e: e.pop("training"), "models[0].training: missing", True),
    (lambda e: e.update(metrics=[]), "models[0].metrics", True),
    (lambda e: e.update(licence="MIT"), "models[0].licence: unknown field", True),
    (lambda e: e.update(urls=[]), "models[0].urls", True),
    (lambda e: e.update(urls=["http://example.com/m.onnx"]), "models[0].urls[0]", True),
    (lambda e: e.update(urls=["m.onnx", "http://localhost.example.com/m.onnx"]), "models[0].urls[1]", True),
    (lambda e: e.update(urls=["../elsewhere/m.onnx"]), "models[0].urls[0]", True),
    (lambda e: e.update(urls=["/abs/m.onnx"]), "models[0].urls[0]", True),
    (lambda e: e.update(urls=["ftp://host/m.onnx"]), "models[0].urls[0]", True),
    (lambda e: e["input"].pop("width"), "models[0].input.width: missing", True),
    (lambda e: e["input"].update(height=-1), "models[0].input.height", True),
    (lambda e: e["input"].update(hu_window=[-125]), "models[0].input.hu_window", True),
    (lambda e: e["input"].update(hu_window=[275, -125]), "models[0].input.hu_window", False),
    (lambda e: e["input"].update(normalization="zscore"), "models[0].input.normalization", True),
    (lambda e: e["input"].update(slice_orientation="lps"), "models[0].input.slice_orientation", True),
    (lambda e: e["input"].update(input_name=""), "models[0].input.input_name", True),
    (lambda e: e.update(labels=e["labels"][:1]), "models[0].labels", True),
    (lambda e: e["labels"][3].update(color=[300, 0, 0]), "models[0].labels[3].color", True),
    (lambda e: e["labels"][3].update(color=[1, 2]), "models[0].labels[3].color", True),
    (lambda e: e["labels"][4].update(index=7), "models[0].labels[4].index", False),
    (lambda e: e["labels"][5].update(name="aorta"), "models[0].labels[5].name", False),
    (lambda e: e["labels"][5].update(name=""), "models[0].labels[5].name", True),
    (lambda e: e["labels"][2]["terminology"]["type"].update(code=""), "models[0].labels[2].terminology.type.code",
     True),
    (lambda e: e["labels"][2]["terminology"]["type"].update(meaning="a^b"),
     "models[0].labels[2].terminology.type.meaning", True),
    (lambda e: e["labels"][2]["terminology"].pop("category"), "models[0].labels[2].terminology.category", True),
    (lambda e: e["labels"][6].update(colour=[1, 2, 3]), "models[0].labels[6].colour: unknown field", True),
    (lambda e: e["input"].update(pixel_spacing_mm=0), "models[0].input.pixel_spacing_mm", True),
    (lambda e: e["input"].update(pixel_spacing_mm="3 mm"), "models[0].input.pixel_spacing_mm", True),
]


@pytest.mark.parametrize("mutate, field, schema_expressible", INVALID_ENTRIES)
def test_invalid_entry_names_the_model_and_field(plumbing_registry, jsonschema_presence, mutate, field,
                                                 schema_expressible):
    data = _rewrite(plumbing_registry, lambda d: mutate(d["models"][0]))
    with pytest.raises(RegistryError) as info:
        load_registry(plumbing_registry)
    text = str(info.value)
    assert field in text
    assert "model 'plumbing'" in text and str(plumbing_registry) in text
    assert "kdseg-train export" in info.value.hint
    if schema_expressible and jsonschema_presence == "with jsonschema":
        # The schema file states the same rule (the Lib's checks and the schema agree).
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, _schema())


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(schema_version=3), "field schema_version: expected one of 1, 2, got 3"),
    (lambda d: d.update(default_model_id="student"), "field default_model_id: 'student' is not the id"),
    (lambda d: d["models"].append(d["models"][0]), "field models[1].id: duplicate id 'plumbing'"),
    (lambda d: d.update(models={}), "field models: expected a list"),
    (lambda d: d.update(extra=1), "field extra: unknown field"),
    (lambda d: d["models"][0].update(id="Bad Id"), "field models[0].id: 'Bad Id' must be lowercase"),
])
def test_invalid_registry_names_the_field(plumbing_registry, jsonschema_presence, mutate, field):
    _rewrite(plumbing_registry, mutate)
    with pytest.raises(RegistryError, match=r"Invalid model registry") as info:
        load_registry(plumbing_registry)
    assert field in str(info.value)


def test_schema_layer_runs_when_jsonschema_is_available(plumbing_registry, tmp_path, monkeypatch):
    # A stricter schema than the Lib's own checks: only the jsonschema layer can reject this.
    schema = _schema()
    schema["definitions"]["model"]["properties"]["title"]["maxLength"] = 5
    stricter = tmp_path / "registry.schema.json"
    stricter.write_text(json.dumps(schema), encoding="utf-8")
    monkeypatch.setattr(registry_module, "schema_path", lambda: stricter)
    with pytest.raises(RegistryError) as info:
        load_registry(plumbing_registry)
    text = str(info.value)
    assert "model 'plumbing', field models[0].title" in text and "maxLength" in text
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    assert load_registry(plumbing_registry).ids() == ["plumbing"]


def test_unknown_model_and_structure_list_the_valid_ones(plumbing_registry):
    registry = load_registry(plumbing_registry)
    with pytest.raises(ModelNotFoundError) as info:
        registry.get("no-such-model")
    assert "'no-such-model'" in info.value.message
    assert info.value.hint.startswith("Known models: plumbing")
    assert info.value.exit_code == 4
    with pytest.raises(ModelNotFoundError) as info:
        registry.get().label_by_name("heart")
    assert "'heart'" in info.value.message
    assert info.value.hint == ("Valid structures: aorta, gallbladder, kidney_left, kidney_right, liver, "
                               "pancreas, spleen, stomach.")
    with pytest.raises(ModelNotFoundError):
        registry.get().label_by_name("background")


def test_default_model_is_used_when_none_is_named(plumbing_registry):
    card = load_registry(plumbing_registry).get()
    second = dataclasses.replace(card, id="second")
    write_registry(plumbing_registry, [card, second], "second")
    registry = load_registry(plumbing_registry)
    assert registry.get().id == "second" and registry.get("plumbing") == card
    write_registry(plumbing_registry, [card, second], None)
    assert load_registry(plumbing_registry).get().id == "plumbing"


def test_write_registry_refuses_an_invalid_card_and_leaves_the_file(plumbing_registry):
    before = plumbing_registry.read_bytes()
    card = load_registry(plumbing_registry).get()
    bad = dataclasses.replace(card, urls=("http://example.com/m.onnx",))
    with pytest.raises(RegistryError, match=r"models\[0\]\.urls\[0\]"):
        write_registry(plumbing_registry, [bad], card.id)
    assert plumbing_registry.read_bytes() == before
    assert sorted(p.name for p in plumbing_registry.parent.iterdir()) == sorted(["registry.json", card.file])


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_written_registry_follows_the_umask_not_a_private_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        path = write_registry(tmp_path / "registry.json", [], None)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]


def test_missing_and_corrupt_registry_files(tmp_path):
    with pytest.raises(RegistryError, match="not found") as info:
        load_registry(tmp_path / "nope.json")
    assert "--registry" in info.value.hint
    bad = tmp_path / "registry.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(RegistryError, match="not valid JSON .line 1"):
        load_registry(bad)
    bad.write_text("[]", encoding="utf-8")
    with pytest.raises(RegistryError, match="expected an object"):
        load_registry(bad)


def test_empty_registry_says_no_trained_model_is_installed(tmp_path):
    path = write_registry(tmp_path / "registry.json", [], None)
    registry = load_registry(path)
    assert registry.ids() == []
    for model_id in (None, "student"):
        with pytest.raises(ModelNotFoundError, match="No trained model is installed"):
            registry.get(model_id)


def test_labels_from_anatomy_are_background_plus_eight_coded_organs():
    labels = labels_from_anatomy()
    assert [label.index for label in labels] == list(range(9))
    assert labels[0].name == "background" and labels[0].terminology is None
    assert all(label.terminology["category"] == {"scheme": "SCT", "code": "123037004",
                                                 "meaning": "Anatomical Structure"} for label in labels[1:])
    assert {label.name: label.terminology["type"]["code"] for label in labels[1:]} == {
        "aorta": "15825003", "gallbladder": "28231008", "kidney_left": "64033007", "kidney_right": "64033007",
        "liver": "10200004", "pancreas": "15776009", "spleen": "78961009", "stomach": "69695003"}


@pytest.mark.parametrize("url, allowed", [
    ("https://github.com/org/repo/releases/download/v1/model.onnx", True),
    ("https://", False),
    ("file:///opt/models/model.onnx", True),
    ("http://127.0.0.1:8000/model.onnx", True),
    ("http://localhost/model.onnx", True),
    ("http://[::1]:8000/model.onnx", True),
    ("http://localhost.example.com/model.onnx", False),
    ("http://example.com/model.onnx", False),
    ("model.onnx", True),
    ("weights/model.onnx", True),
    ("../model.onnx", False),
    ("weights\\..\\..\\model.onnx", False),
    ("/etc/model.onnx", False),
    ("C:/model.onnx", False),
])
def test_url_rule_matches_the_schema(url, allowed):
    assert url_is_allowed(url) is allowed
    url_schema = _schema()["definitions"]["model"]["properties"]["urls"]["items"]
    assert jsonschema.Draft7Validator(url_schema).is_valid(url) is allowed


def test_physical_size_cards_need_schema_2_and_version_1_cards_stay_resize_mode(plumbing_registry):
    data = json.loads(plumbing_registry.read_text(encoding="utf-8"))
    assert data["schema_version"] == 2 and "pixel_spacing_mm" not in data["models"][0]["input"]
    # A registry written by the previous version (schema 1, no spacing) still loads, as resize mode.
    _rewrite(plumbing_registry, lambda d: d.update(schema_version=1))
    assert load_registry(plumbing_registry).get(None).input.pixel_spacing_mm is None
    # Schema 1 cannot declare a physical-size input.
    _rewrite(plumbing_registry, lambda d: d["models"][0]["input"].update(pixel_spacing_mm=3.0))
    with pytest.raises(RegistryError, match="needs schema_version 2"):
        load_registry(plumbing_registry)
    _rewrite(plumbing_registry, lambda d: d.update(schema_version=2))
    card = load_registry(plumbing_registry).get(None)
    assert card.input.pixel_spacing_mm == 3.0
    assert card_to_dict(card)["input"]["pixel_spacing_mm"] == 3.0
