"""ONNX export checked with ONNX Runtime on real CT slices; folding; safetensors round trip."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from KDSegmentationLib.orientation import to_canonical
from KDSegmentationLib.preprocessing import window_to_unit
from kdseg_train.export import export_onnx, export_safetensors, fold_for_inference, load_safetensors_model
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


def test_onnx_matches_pytorch_on_real_ct_slices(trained_ish_student, real_slices, tmp_path):
    path = export_onnx(trained_ish_student, tmp_path / "student.onnx", img_size=128)
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version >= 17
    ops = {node.op_type for node in graph.graph.node}
    assert "BatchNormalization" not in ops
    assert graph.graph.input[0].name == "image" and graph.graph.output[0].name == "logits"
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
