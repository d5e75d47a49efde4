"""ONNX export checked with ONNX Runtime on real CT slices; folding; safetensors round trip."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.inference.preprocessing import window_to_unit
from kdseg_train.export import (export_onnx, export_safetensors, fold_for_inference, load_safetensors_model,
                                onnx_parity)
from kdseg_train.models import create_model


@pytest.fixture(scope="module")
def real_slices(shared_data):
    ct = sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" / "example_ct.nii.gz"))
    hu = sitk.GetArrayFromImage(to_canonical(ct))[60:100:5]
    x = torch.from_numpy(window_to_unit(hu, (-125, 275)))[:, None]
    return F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def trained_ish_student(real_slices):
    """A student whose BatchNorm statistics are non-trivial (a few train-mode passes)."""
    torch.manual_seed(0)
    model = create_model("student-shsa", img_size=128)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(real_slices)
    return model.eval()


def test_folding_removes_batchnorm_and_weight_standardisation(trained_ish_student, real_slices):
    folded = fold_for_inference(trained_ish_student)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(real_slices), trained_ish_student(real_slices), atol=1e-4, rtol=1e-4)


def test_batchnorm_encoder_exports_as_plain_convolutions(real_slices, tmp_path):
    """student-shsa-lite-bn: every encoder norm folds away, so ONNX normalises only in attention."""
    torch.manual_seed(0)
    model = create_model("student-shsa-lite-bn", img_size=128).train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics
            model(real_slices)
    model.eval()
    folded = fold_for_inference(model)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in folded.encoder.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(real_slices), model(real_slices), atol=1e-4, rtol=1e-4)
    graph = onnx.load(str(export_onnx(model, tmp_path / "bn.onnx", img_size=128)))
    norms = [n.name for n in graph.graph.node if n.op_type in ("BatchNormalization", "InstanceNormalization")]
    # The single SHSA head's GroupNorm(1) per transformer layer is all that normalises at run time.
    assert norms and all("/transformer/" in name for name in norms), norms


def test_onnx_matches_pytorch_on_real_ct_slices(trained_ish_student, real_slices, tmp_path):
    path = export_onnx(trained_ish_student, tmp_path / "student.onnx", img_size=128)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version >= 17
    ops = {node.op_type for node in graph.graph.node}
    assert "BatchNormalization" not in ops
    # Only the logits leave the graph: no distillation tap is exported.
    assert [i.name for i in graph.graph.input] == ["image"] and [o.name for o in graph.graph.output] == ["logits"]
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 128, 128]
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = trained_ish_student(real_slices).numpy()
    for batch in (1, len(real_slices)):  # dynamic batch
        actual = session.run(["logits"], {"image": real_slices[:batch].numpy()})[0]
        assert np.abs(actual - expected[:batch]).max() <= 1e-3
        agreement = (actual.argmax(1) == expected[:batch].argmax(1)).mean()
        assert agreement >= 0.999
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx"]


def test_safetensors_round_trip(trained_ish_student, real_slices, tmp_path):
    export_safetensors(trained_ish_student, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_safetensors_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(real_slices), trained_ish_student(real_slices))


def test_failed_parity_check_leaves_no_file(trained_ish_student, tmp_path):
    with pytest.raises(RuntimeError, match="differs from PyTorch.*was not written"):
        export_onnx(trained_ish_student, tmp_path / "student.onnx", img_size=128, atol=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_bad_arguments(tmp_path):
    model = create_model("student-shsa-tiny", img_size=64)
    for kwargs, match in (({"img_size": 40}, "multiple of 16"), ({"img_size": 16}, "at least 32"),
                          ({"img_size": 64, "opset": 13}, "opset"), ({"img_size": 64, "exporter": "tf"}, "exporter")):
        with pytest.raises(ValueError, match=match):
            export_onnx(model, tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_rgb_model_export_for_video_frames(tmp_path, shared_data):
    from PIL import Image

    frame = sorted((shared_data / "cataract1k" / "test" / "images").glob("*.png"))[0]
    rgb = np.asarray(Image.open(frame).convert("RGB"), dtype=np.float32) / 255.0
    x = F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None], size=(64, 64), mode="bilinear",
                      align_corners=False)
    torch.manual_seed(0)
    model = create_model("student-shsa-tiny", num_classes=5, img_size=64, in_channels=3).eval()
    path = export_onnx(model, tmp_path / "rgb.onnx", img_size=64)
    report = onnx_parity(model, path, x)
    assert report.max_abs_diff <= 1e-3 and report.argmax_agreement >= 0.999


def test_safetensors_loader_errors_name_the_problem(trained_ish_student, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_safetensors_model(tmp_path)
    export_safetensors(trained_ish_student, tmp_path, {"steps": 3})
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert config["steps"] == 3 and config["config"]["attention"] == "shsa"
    # A config describing another architecture than the weights: named, not a cryptic size error.
    config["config"]["hidden_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match="does not fit the architecture.*wrong shape"):
        load_safetensors_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_safetensors_model(tmp_path)


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_graph_behaviour(trained_ish_student, real_slices, tmp_path):
    path = export_onnx(trained_ish_student, tmp_path / "student.onnx", img_size=128, exporter="dynamo")
    assert [p.name for p in tmp_path.iterdir()] == ["student.onnx"]  # weights inside, no external data
    for batch in (1, 3):
        report = onnx_parity(trained_ish_student, path, real_slices[:batch])
        assert report.max_abs_diff <= 1e-3 and report.argmax_agreement >= 0.999


@pytest.mark.slow
def test_teacher_onnx_export_parity_on_real_slices(real_slices, tmp_path):
    """The 105 M-parameter teacher once, at 32x32 (the 420 MB export takes ~20 s on two cores)."""
    torch.manual_seed(0)
    teacher = create_model("teacher-r50-b16", img_size=32).eval()
    small = F.interpolate(real_slices[:2], size=(32, 32), mode="bilinear", align_corners=False)
    path = export_onnx(teacher, tmp_path / "teacher.onnx", img_size=32)
    assert path.stat().st_size > 4 * 105e6
    report = onnx_parity(teacher, path, small)
    assert report.max_abs_diff <= 1e-3 and report.argmax_agreement >= 0.999
