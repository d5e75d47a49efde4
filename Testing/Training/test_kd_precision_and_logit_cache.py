"""Distillation terms stay float32 under bfloat16 autocast; region affinity takes any float dtype; masked
pixel KD; the teacher-logit cache is reused, keyed by teacher weights and data, and rebuilt when corrupt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdseg_train.data.label_maps import IGNORE_INDEX
from kdseg_train.export import export_safetensors
from kdseg_train.logit_cache import load_or_build_logit_cache
from kdseg_train.losses import (DISTILLATION_TERMS, CachedTeacherLogits, FeatureDims, PixelKLDivergence,
                                RegionAffinityDistillation, build_distillation)
from kdseg_train.models import create_model


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    student = create_model("student-shsa-tiny", num_classes=9, img_size=32).eval()
    teacher = create_model("student-mhsa", num_classes=9, img_size=32, depth=3).eval()
    return student, teacher


def test_every_term_under_bfloat16_autocast_equals_its_float32_value(pair):
    student, teacher = pair
    config = {name: {"weight": 1.0} for name in DISTILLATION_TERMS}
    config["channel_kd"] = {"weight": 1.0, "feature": "decoder:1", "tau": 4.0}
    criterion = build_distillation(config, FeatureDims.from_model(student, 9), FeatureDims.from_model(teacher, 9))
    torch.manual_seed(1)
    x = torch.rand(2, 1, 32, 32)
    labels = torch.randint(0, 9, (2, 32, 32))
    with torch.no_grad():
        s_out, t_out = student(x, return_features=True), teacher(x, return_features=True)
        _, reference = criterion(s_out, t_out, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, autocast = criterion(s_out, t_out, labels)
    assert set(autocast) == set(DISTILLATION_TERMS)
    for name, value in autocast.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-7, msg=name)
    # Without the float32 guard these terms change in bfloat16 (the issue measured up to 10x): proof
    # that the comparison above can fail.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        raw = criterion.terms["pairwise_kd"](s_out.decoder_features[0], t_out.decoder_features[0])
    assert raw.dtype == torch.bfloat16 or not torch.isclose(raw.float(), reference["pairwise_kd"], rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_region_affinity_accepts_float64_and_half(dtype):
    torch.manual_seed(2)
    student, teacher = torch.randn(2, 6, 8, 8), torch.randn(2, 10, 8, 8)
    labels = torch.randint(0, 4, (2, 16, 16))
    labels[0, :3] = IGNORE_INDEX
    term = RegionAffinityDistillation(9)
    reference = term(student, teacher, labels)
    value = term(student.to(dtype), teacher.to(dtype), labels)
    assert value.dtype == dtype and torch.isfinite(value)
    tolerance = 1e-6 if dtype == torch.float64 else 5e-2  # vs the float32 reference
    assert abs(value.double().item() - reference.double().item()) <= tolerance * max(1.0, abs(reference.item()))


def test_masked_pixel_kd_averages_over_valid_pixels_only():
    torch.manual_seed(3)
    s, t = torch.randn(2, 9, 6, 6), torch.randn(2, 9, 6, 6)
    valid = torch.zeros(2, 6, 6, dtype=torch.bool)
    valid[0, :3] = True
    kd = PixelKLDivergence(temperature=2.0)
    inside = kd(s[:1, :, :3], t[:1, :, :3])
    torch.testing.assert_close(kd(s, t, valid), inside)
    t_garbage = t.clone()
    t_garbage[~valid[:, None].expand_as(t)] = 1e4  # invalid teacher pixels must not matter
    torch.testing.assert_close(kd(s, t_garbage, valid), inside)
    # Through the criterion, as the trainer passes cached logits.
    criterion = build_distillation({"pixel_kd": {"weight": 1.0, "temperature": 2.0}},
                                   FeatureDims(9, 16, 1, (8, 8, 8, 8)), FeatureDims(9, 16, 1, (8, 8, 8, 8)))
    _, values = criterion(s, CachedTeacherLogits(t_garbage, valid))
    torch.testing.assert_close(values["pixel_kd"], inside)


class _CountingTeacher(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_logit_cache_is_reused_keyed_and_verified(tmp_path, pair, caplog):
    _, teacher = pair
    teacher_dir = tmp_path / "teacher"
    export_safetensors(teacher, teacher_dir / "final", {"steps": 1})
    counting = _CountingTeacher(teacher).eval()
    inputs = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    folder = tmp_path / "cache"
    first = load_or_build_logit_cache(counting, teacher_dir, inputs, "data-a", folder, batch_size=2)
    assert first.shape == (5, 9, 32, 32) and first.dtype == np.float16 and counting.calls == 3
    with torch.no_grad():
        expected = teacher(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(first.astype(np.float32), expected, atol=2e-2, rtol=1e-2)
    again = load_or_build_logit_cache(counting, teacher_dir, inputs, "data-a", folder, batch_size=2)
    assert counting.calls == 3 and np.array_equal(again, first)  # reused: no teacher forward
    (cache_dir,) = [p for p in folder.iterdir()]
    meta = json.loads((cache_dir / "meta.json").read_text())
    assert meta["shape"] == [5, 9, 32, 32] and len(meta["teacher_sha256"]) == 64

    # Other data -> another key and folder.
    load_or_build_logit_cache(counting, teacher_dir, inputs[:3], "data-b", folder, batch_size=2)
    assert counting.calls == 5 and len(list(folder.iterdir())) == 2

    # Corrupt file -> rebuilt, not used.
    np.save(cache_dir / "logits.npy", np.zeros_like(first))
    rebuilt = load_or_build_logit_cache(counting, teacher_dir, inputs, "data-a", folder, batch_size=2)
    assert counting.calls == 8 and np.array_equal(rebuilt, first)
    assert "does not verify" in caplog.text

    # Other teacher weights -> another key.
    with torch.no_grad():
        teacher.segmentation_head.bias.add_(1.0)
    try:
        export_safetensors(teacher, teacher_dir / "final", {"steps": 2})
        load_or_build_logit_cache(counting, teacher_dir, inputs, "data-a", folder, batch_size=2)
        assert counting.calls == 11 and len(list(folder.iterdir())) == 3
    finally:
        with torch.no_grad():
            teacher.segmentation_head.bias.sub_(1.0)
