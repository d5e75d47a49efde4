"""Typed run configuration: one place for defaults, unknown keys and wrong types refused by path."""

from pathlib import Path

import pytest
import yaml

from kdseg_train.config import (DEFAULTS, ConfigError, RunConfig, TrainSection, load_config, load_run_config)
from kdseg_train.losses.distillation import DISTILLATION_TERMS, DistillationTerm, _TERMS

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "Training" / "configs").glob("*.yaml"))


def _effective_raw(path):
    """What a YAML file (after its ``base:`` files) sets, section by section, without the defaults."""
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    bases = loaded.pop("base", None) or []
    out = {}
    for base in [bases] if isinstance(bases, str) else bases:
        out.update(_effective_raw(path.parent / base))
    out.update(loaded)
    return out


def test_defaults_are_the_dataclass_defaults():
    typed = RunConfig()
    assert DEFAULTS == typed.to_dict()
    assert DEFAULTS["train"]["max_steps"] == TrainSection().max_steps == typed.train.max_steps
    assert list(DEFAULTS) == ["model", "data", "loss", "optim", "train", "distill", "evaluate", "export", "output"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_typed_to_the_same_values(path):
    plain = load_config(path)
    typed = load_run_config(path)
    assert typed.to_dict() == plain
    assert typed.model.name == plain["model"]["name"] and typed.train.max_steps == plain["train"]["max_steps"]
    for key, value in _effective_raw(path).items():
        if isinstance(value, dict):
            for inner, v in value.items():
                if not isinstance(v, dict):
                    assert plain[key][inner] == v, f"{path.name}: {key}.{inner}"


@pytest.mark.parametrize("override, message", [
    ("train.max_stepz=5", "unknown config key 'train.max_stepz'; valid keys of train: amp, checkpoint_every"),
    ("optim.learning_rate=0.1", "unknown config key 'optim.learning_rate'"),
    ("nonsense=1", "unknown config key 'nonsense'; valid keys: data, distill"),
    ("train.max_steps=many", "config key 'train.max_steps' must be an integer, got 'many'"),
    ("train.amp=maybe", None),  # a string is a valid type; the trainer checks the value
    ("data.hu_window=[-100, high]", "config key 'data.hu_window' must be a list of numbers"),
    ("train=5", "config key 'train' must be a section (a mapping), got 5"),
    ("data.augment=1", "config key 'data.augment' must be true or false, got 1"),
])
def test_unknown_keys_and_wrong_types_are_refused_with_their_path(override, message):
    if message is None:
        assert load_config(None, [override])["train"]["amp"] == "maybe"
        return
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message)


def test_open_sections_keep_their_own_validation():
    config = load_config(None, ["model.overrides.dropout=0.0", "distill.pixel_kd.weight=0.5", "optim.lr=1"])
    assert config["model"]["overrides"] == {"dropout": 0.0} and config["distill"]["pixel_kd"] == {"weight": 0.5}
    assert load_run_config(None, ["optim.lr=1"]).optim.lr == 1  # an int where a float is expected


def test_distillation_terms_are_registered_with_typed_options():
    assert list(DISTILLATION_TERMS) == list(_TERMS)
    for name, term in _TERMS.items():
        assert issubclass(term, DistillationTerm) and term.name == name
        assert term.from_options({}).weight == 0.0  # every option has a default
    assert _TERMS["pixel_kd"].from_options({"weight": 0.5, "temperature": "2"}).temperature == 2.0
    assert _TERMS["ranking_kd"].from_options({"layer": 2}).teacher_layer is None
