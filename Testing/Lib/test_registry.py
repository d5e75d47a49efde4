"""Model registry: the bundled file, schema validation and field-naming errors."""

import copy
import json

import pytest

from KDSegmentationLib.errors import ModelNotFoundError, RegistryError
from KDSegmentationLib.registry import card_from_dict, card_to_dict, labels_from_anatomy, load_registry
from KDSegmentationLib.resources import registry_path


def _entry(registry):
    return json.loads(registry.read_text(encoding="utf-8"))["models"][0]


def test_bundled_registry_is_valid_against_schema():
    import jsonschema
    data = json.loads(registry_path().read_text(encoding="utf-8"))
    schema = json.loads((registry_path().parent / "registry.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(data, schema)
    registry = load_registry()
    for card in registry.models.values():
        assert card.intended_use, "every shipped model states its intended use"


def test_written_registry_matches_schema_and_round_trips(plumbing_registry):
    import jsonschema

    schema = json.loads((registry_path().parent / "registry.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(json.loads(plumbing_registry.read_text(encoding="utf-8")), schema)
    card = load_registry(plumbing_registry).get()
    assert card_from_dict(card_to_dict(card)) == card
    assert [label.name for label in card.foreground_labels()] == [
        "aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach"]
    left = card.label_by_name("Left kidney")
    assert left.terminology["type"]["code"] == "64033007"
    assert left.terminology["type_modifier"]["code"] == "7771000"


@pytest.mark.parametrize("mutate, field", [
    (lambda e: e.pop("sha256"), "sha256: missing"),
    (lambda e: e.update(sha256="abc"), "sha256"),
    (lambda e: e["labels"][3].update(color=[300, 0, 0]), "labels[3].color"),
    (lambda e: e["input"].update(hu_window=[275, -125]), "input.hu_window"),
    (lambda e: e.update(urls=["http://example.com/m.onnx"]), "urls[0]"),
    (lambda e: e["labels"][2]["terminology"]["type"].update(code=""), "labels[2].terminology.type.code"),
    (lambda e: e.update(size_bytes="12"), "size_bytes"),
])
def test_invalid_entry_names_the_field(plumbing_registry, mutate, field):
    data = json.loads(plumbing_registry.read_text(encoding="utf-8"))
    mutate(data["models"][0])
    plumbing_registry.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_registry(plumbing_registry)
    assert field in str(info.value)
    assert "untrained-plumbing" in str(info.value)


def test_unknown_model_and_structure_list_the_valid_ones(plumbing_registry):
    registry = load_registry(plumbing_registry)
    with pytest.raises(ModelNotFoundError, match="untrained-plumbing"):
        registry.get("no-such-model")
    with pytest.raises(ModelNotFoundError, match="liver"):
        registry.get().label_by_name("heart")


def test_missing_and_corrupt_registry_files(tmp_path):
    with pytest.raises(RegistryError, match="not found"):
        load_registry(tmp_path / "nope.json")
    bad = tmp_path / "registry.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(RegistryError, match="not valid JSON"):
        load_registry(bad)


def test_labels_from_anatomy_are_background_plus_eight_coded_organs():
    labels = labels_from_anatomy()
    assert [label.index for label in labels] == list(range(9))
    assert all(label.terminology["category"]["code"] == "123037004" for label in labels[1:])
