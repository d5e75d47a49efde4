"""`kdseg-train models`: the cost report users read, in JSON and as a table, with clear errors."""

import json

from kdseg_train.cli import main as kdseg_train


def test_models_json_reports_params_macs_and_onnx_size(capsys):
    assert kdseg_train(["models", "--json", "--models", "student-shsa", "student-shsa-tiny", "--img-size", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["img_size"] == 64 and "2 FLOPs" in report["mac_convention"]
    rows = {row["name"]: row for row in report["models"]}
    assert list(rows) == ["student-shsa", "student-shsa-tiny"]
    # 3,503,185 at 224; the learned position table has 16 instead of 196 rows of 256 at 64.
    assert rows["student-shsa"]["parameters"] == 3_503_185 - (196 - 16) * 256
    assert rows["student-shsa-tiny"]["parameters"] < rows["student-shsa"]["parameters"]
    # MACs scale with the pixel count for the convolutions; 64x64 is 1/12.25 of 224x224.
    assert 0.15e9 < rows["student-shsa"]["macs"] < 0.3e9
    # fp32 ONNX of the folded graph: 4 bytes per weight plus the graph (BN folded away).
    assert 4 * 3.4e6 < rows["student-shsa"]["onnx_bytes"] < 4 * 3.7e6


def test_models_table_and_unknown_name(capsys):
    assert kdseg_train(["models", "--no-onnx-size", "--models", "student-shsa-tiny", "student-shsa"]) == 0
    out = capsys.readouterr().out
    assert "student-shsa-tiny" in out and "multiply-add" in out
    assert kdseg_train(["models", "--no-onnx-size", "--models", "student-nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'student-nope'" in err and "student-shsa" in err
