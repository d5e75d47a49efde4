"""`kdseg-train quantise`: a real int8 QDQ copy of the bundled fp32 graph, calibrated and evaluated on real CT.

The fp32 model is the bundled graph (through the plumbing registry); calibration and
validation use small bands of the real example CT, so the run is short. Accuracy of the
shipped int8 model is checked in Testing/Lib/test_bundled_model.py.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from kdseg_train.cli import main as kdseg_train
from kdseg_train.quantisation import (calibration_images, case_mean_dice, dice_comparison, is_qdq_model,
                                      write_quantised_entry)
from kdseg_train.errors import UsageError
from KDSegmentationLib.weights.file_digest import sha256_of
from KDSegmentationLib.weights.model_registry import load_registry


def _config(tmp_path, shared_data):
    ts = shared_data / "ct" / "totalsegmentator_example"
    entry = {"image": str(ts / "example_ct_sm.nii.gz"), "label": str(ts / "example_seg.nii.gz"),
             "remap": "totalsegmentator"}
    cfg = {"model": {"name": "student-shsa-tiny", "num_classes": 9, "img_size": 128},
           "data": {"train": [dict(entry, name="calib_band", slices=[0.5, 0.7])],
                    "val": [dict(entry, name="val_band", slices=[0.7, 0.9])], "batch_size": 4},
           "output": str(tmp_path / "run")}
    path = tmp_path / "quantise.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_quantise_adds_an_evaluated_int8_entry_and_keeps_the_default(tmp_path, shared_data, plumbing_registry,
                                                                    capsys):
    config = _config(tmp_path, shared_data)
    release = plumbing_registry.parent  # the fp32 "plumbing" entry is already there
    fp32 = load_registry(plumbing_registry).get("plumbing")
    assert kdseg_train(["quantise", str(config), "--model", str(plumbing_registry),
                        "--release", str(release)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "calibration: 6 slices" in out and "val_band" in out  # 20% of 30 slices, the training band only

    registry = load_registry(release / "registry.json")
    assert registry.ids() == ["plumbing", "plumbing-int8"] and registry.default_model_id == "plumbing"
    card = registry.get("plumbing-int8")
    onnx = release / card.file
    assert card.file == "plumbing-int8.onnx" and is_qdq_model(onnx) and not is_qdq_model(release / fp32.file)
    assert card.sha256 == sha256_of(onnx) and card.size_bytes < fp32.size_bytes / 2
    assert (card.input, card.labels) == (fp32.input, fp32.labels)
    record = card.training["quantisation"]
    assert (record["source_model"], record["source_sha256"]) == ("plumbing", fp32.sha256)
    assert record["calibration"]["cases"] == ["calib_band"] and record["calibration"]["slices"] == 6
    assert record["command"].startswith("kdseg-train quantise ") and "--release" in record["command"]
    # Its own evaluation, and the comparison with fp32 on the same cases.
    assert card.metrics["evaluation"]["cases"] == ["val_band"]
    int8_report = json.loads((tmp_path / "run" / "evaluation_plumbing-int8" / "int8" / "evaluation.json")
                             .read_text(encoding="utf-8"))
    fp32_report = json.loads((tmp_path / "run" / "evaluation_plumbing-int8" / "fp32" / "evaluation.json")
                             .read_text(encoding="utf-8"))
    assert int8_report["model"]["id"] == "plumbing-int8" and fp32_report["model"]["id"] == "plumbing"
    assert card.metrics["evaluation"]["summary"] == int8_report["summary"]
    row = card.metrics["fp32_comparison"]["per_case_mean_dice"]["val_band"]
    assert row["int8"] == pytest.approx(case_mean_dice(int8_report)["val_band"])
    assert row["fp32"] == pytest.approx(case_mean_dice(fp32_report)["val_band"])
    assert row["points"] >= -0.5  # the default bar was applied before anything was written
    sums = (release / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    assert sums == [f"{fp32.sha256}  {fp32.file}", f"{card.sha256}  {card.file}"]
    text = (release / "plumbing-int8.md").read_text(encoding="utf-8")
    assert "## Quantisation" in text and fp32.sha256 in text and "| val_band |" in text


def test_quantise_writes_nothing_when_a_case_loses_too_much(tmp_path, shared_data, plumbing_registry, capsys):
    config = _config(tmp_path, shared_data)
    before = sorted(p.name for p in plumbing_registry.parent.iterdir())
    registry_text = plumbing_registry.read_text(encoding="utf-8")
    # A bar no model can pass (it would have to gain 100 Dice points) exercises the refusal.
    assert kdseg_train(["quantise", str(config), "--model", str(plumbing_registry), "--release",
                        str(plumbing_registry.parent), "--max-dice-loss", "-100"]) == 2
    assert "nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in plumbing_registry.parent.iterdir()) == before
    assert plumbing_registry.read_text(encoding="utf-8") == registry_text


def test_quantise_refuses_a_file_name_another_entry_uses_before_touching_it(tmp_path, shared_data,
                                                                         plumbing_registry, capsys):
    import dataclasses
    import shutil

    from KDSegmentationLib.weights.model_registry import write_registry

    config = _config(tmp_path, shared_data)
    release = plumbing_registry.parent
    fp32 = load_registry(plumbing_registry).get("plumbing")
    shutil.copyfile(release / fp32.file, release / "plumbing-int8.onnx")  # another entry's weights
    other = dataclasses.replace(fp32, id="other", file="plumbing-int8.onnx")
    write_registry(plumbing_registry, [fp32, other], "plumbing")
    digest = sha256_of(release / "plumbing-int8.onnx")
    assert kdseg_train(["quantise", str(config), "--model", str(plumbing_registry), "--release", str(release)]) == 2
    assert "already the file of entry other" in capsys.readouterr().err
    assert sha256_of(release / "plumbing-int8.onnx") == digest
    assert load_registry(plumbing_registry).ids() == ["plumbing", "other"]


def test_quantise_refuses_when_no_validation_case_scores_an_organ(tmp_path, shared_data, plumbing_registry, capsys,
                                                                 monkeypatch):
    # Both models evaluated, but no case scored an organ (every declared organ absent from its reference
    # and from both predictions): nothing shows the int8 model is as good, so nothing is written.
    monkeypatch.setattr("kdseg_train.quantisation.dice_comparison",
                        lambda fp32, int8: {"val_band": {"fp32": math.nan, "int8": math.nan, "points": math.nan}})
    config = _config(tmp_path, shared_data)
    before = sorted(p.name for p in plumbing_registry.parent.iterdir())
    assert kdseg_train(["quantise", str(config), "--model", str(plumbing_registry), "--release",
                        str(plumbing_registry.parent)]) == 2
    assert "no validation case scored an organ" in capsys.readouterr().err
    assert sorted(p.name for p in plumbing_registry.parent.iterdir()) == before


def test_calibration_uses_only_file_based_training_bands(shared_data):
    ts = shared_data / "ct" / "totalsegmentator_example"
    entry = {"name": "band", "image": str(ts / "example_ct_sm.nii.gz"), "label": str(ts / "example_seg.nii.gz"),
             "remap": "totalsegmentator", "slices": [0.5, 0.7]}
    [(name, image)] = calibration_images([entry], (-125, 275), 9, 128)
    assert name == "band" and image.GetSize() == (122, 101, 6)
    with pytest.raises(UsageError, match="no CT file"):
        calibration_images([], (-125, 275), 9, 128)


def _report(dice_by_case):
    return {"cases": {case: {"organs": {organ: {"transunet": {"dice": d}} for organ, d in organs.items()}}
                      for case, organs in dice_by_case.items()}}


def test_per_case_mean_dice_and_the_comparison():
    fp32 = _report({"a": {"liver": 0.9, "spleen": 0.7}, "b": {"liver": 0.5}, "c": {}})
    int8 = _report({"a": {"liver": 0.9, "spleen": 0.69}, "b": {"liver": 0.51}, "c": {}})
    means = case_mean_dice(fp32)
    assert means["a"] == pytest.approx(0.8) and means["b"] == 0.5 and math.isnan(means["c"])
    rows = dice_comparison(fp32, int8)
    assert rows["a"]["points"] == pytest.approx(-0.5) and rows["b"]["points"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different cases"):
        dice_comparison(fp32, _report({"a": {"liver": 0.9}}))


def test_an_entry_whose_file_does_not_match_is_refused(tmp_path, plumbing_registry):
    card = load_registry(plumbing_registry).get("plumbing")
    (tmp_path / card.file).write_bytes(b"not the model")
    with pytest.raises(UsageError, match="does not match the card's SHA-256"):
        write_quantised_entry(tmp_path, card)
    assert not (tmp_path / "registry.json").exists()


def test_every_bundled_card_markdown_is_the_rendering_of_its_entry():
    """Resources/Models/<id>.md of each bundled model, the int8 copy included, comes from registry.json."""
    from pathlib import Path

    from kdseg_train.release_card import render_model_card

    models = Path(__file__).resolve().parents[2] / "Resources" / "Models"
    registry = load_registry(models / "registry.json")
    assert len(registry.ids()) >= 2  # fp32 and its int8 copy
    for card in registry.models.values():
        assert (models / f"{card.id}.md").read_text(encoding="utf-8") == render_model_card(card), card.id
    int8 = next(card for card in registry.models.values() if "quantisation" in card.training)
    assert "## Quantisation" in render_model_card(int8)
