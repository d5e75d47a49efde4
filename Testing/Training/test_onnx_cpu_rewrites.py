"""Exact CPU rewrites of exported graphs: what they change, what they leave, and that results stay."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import SimpleITK as sitk
from onnx import TensorProto, helper, numpy_helper

from kdseg_train.export import export_onnx
from kdseg_train.models import create_model
from kdseg_train.onnx_cpu_rewrites import CpuRewrites, rewrite_for_cpu


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _ops(model: onnx.ModelProto):
    return [node.op_type for node in model.graph.node]


def test_bundled_model_is_the_rewritten_graph(plumbing_onnx):
    """The bundled student (0.2.1 on) ships with the rewrites: nothing is left for them to do.

    0.2.0, exported before the rewrites, had one channel repeat, three decoder Concat -> Conv and
    one skip Pad to rewrite; 0.2.1 is the same checkpoint exported with them, and gave 0.2.0's
    labels on every real CT in ../shared/data (compared when it was shipped; Training/README). Its
    labels on real CT are guarded by test_bundled_model_reproduces_its_card.py.
    """
    bundled = onnx.load(str(plumbing_onnx))
    again, done = rewrite_for_cpu(bundled)
    assert done == CpuRewrites(channel_repeats_folded=0, concats_split=0, pads_folded=0)
    ops = _ops(bundled)
    assert "Tile" not in ops and "Expand" not in ops and "Pad" not in ops
    assert _ops(again) == ops
    weights = {init.name: init for init in bundled.graph.initializer}
    root = next(node for node in bundled.graph.node if node.op_type == "Conv")
    assert root.input[0] == "image" and list(weights[root.input[1]].dims)[1] == 1


def test_export_applies_the_rewrites_and_matches_pytorch(shared_data, tmp_path):
    import torch

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "ct" / "totalsegmentator_example" /
                                                   "example_ct.nii.gz")))[40:80:5, 18:82, 29:93]
    x = np.clip((ct.astype(np.float32) + 125.0) / 400.0, 0.0, 1.0)[:, None]
    torch.manual_seed(0)
    model = create_model("student-shsa-lite-bn", img_size=64).train()
    with torch.no_grad():  # BatchNorm statistics of real slices, as after training
        for _ in range(3):
            model(torch.from_numpy(x))
    model.eval()
    plain = onnx.load(str(export_onnx(model, tmp_path / "plain.onnx", img_size=64, cpu_rewrites=False)))
    rewritten = onnx.load(str(export_onnx(model, tmp_path / "rewritten.onnx", img_size=64)))
    assert "Tile" in _ops(plain) and "Pad" in _ops(plain)
    assert "Tile" not in _ops(rewritten) and "Pad" not in _ops(rewritten)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    for graph in (plain, rewritten):
        np.testing.assert_allclose(_run(graph, x), expected, atol=1e-3, rtol=0)


def _tile_graph(gather_index: int) -> onnx.ModelProto:
    """x (N,1,8,8) -> Tile to 3 channels -> Conv 3->4, plus Shape -> Gather(index) read as an output."""
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Tile", ["x", "reps"], ["t"]),
             helper.make_node("Conv", ["t", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["t"], ["s"]),
             helper.make_node("Gather", ["s", "i"], ["g"], axis=0)]
    graph = helper.make_graph(
        nodes, "tile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8]),
         helper.make_tensor_value_info("g", TensorProto.INT64, [])],
        [numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "reps"), numpy_helper.from_array(weight, "w"),
         numpy_helper.from_array(np.array(gather_index, np.int64), "i")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_channel_repeat_folds_only_when_no_reader_needs_the_channel_count():
    x = np.random.default_rng(1).random((2, 1, 8, 8), dtype=np.float32)
    reads_height = _tile_graph(2)
    folded, done = rewrite_for_cpu(reads_height)
    assert done.channel_repeats_folded == 1 and "Tile" not in _ops(folded)
    np.testing.assert_allclose(_run(folded, x), _run(reads_height, x), rtol=1e-5, atol=1e-5)

    reads_channels = _tile_graph(1)  # Gather index 1 = the 3 channels the Tile makes
    kept, done = rewrite_for_cpu(reads_channels)
    assert done.channel_repeats_folded == 0 and "Tile" in _ops(kept)


def _concat_graph(pad_value: float, extra_reader: bool) -> onnx.ModelProto:
    """a (N,2,6,6) and b = Conv 2x2 of a (N,3,5,5) padded to 6x6 at its end -> Concat -> Conv 3x3 5->4 (+ bias)."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["a", "wb"], ["b"]),
             helper.make_node("Pad", ["b", "pads", "value"], ["bp"], mode="constant"),
             helper.make_node("Concat", ["a", "bp"], ["c"], axis=1),
             helper.make_node("Conv", ["c", "w", "bias"], ["y"], pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 6, 6])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 5, 6, 6]))
    graph = helper.make_graph(
        nodes, "concat", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 2, 6, 6])], outputs,
        [numpy_helper.from_array(rng.standard_normal((3, 2, 2, 2)).astype(np.float32), "wb"),
         numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pads"),
         numpy_helper.from_array(np.array(pad_value, np.float32), "value"),
         numpy_helper.from_array(rng.standard_normal((4, 5, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("pad_value, extra_reader, expected", [
    (0.0, False, CpuRewrites(concats_split=1, pads_folded=1)),
    (1.0, False, CpuRewrites(concats_split=1, pads_folded=0)),  # a non-zero fill is not a conv's padding
    (0.0, True, CpuRewrites()),  # the concatenated tensor is needed elsewhere: nothing to save
])
def test_concat_conv_split_and_pad_fold(pad_value, extra_reader, expected):
    graph = _concat_graph(pad_value, extra_reader)
    rewritten, done = rewrite_for_cpu(graph)
    assert done == expected
    a = np.random.default_rng(3).standard_normal((2, 2, 6, 6)).astype(np.float32)
    for got, want in zip(_run(rewritten, a), _run(graph, a)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert ("Concat" in _ops(rewritten)) == (expected.concats_split == 0)
    assert ("Pad" in _ops(rewritten)) == (expected.pads_folded == 0)


def test_graph_input_without_fixed_channels_and_size_is_refused():
    graph = _tile_graph(2)
    graph.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    with pytest.raises(ValueError, match=r"must be \(N, C, H, W\) with fixed C, H, W"):
        rewrite_for_cpu(graph)


def _run_all(model: onnx.ModelProto, x: np.ndarray):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def test_channel_count_read_through_a_shape_slice_keeps_the_repeat():
    """Shape(start=1) puts the channel count at index 0: folding the repeat would change it from 3 to 1."""
    graph = _tile_graph(0)
    shape = next(node for node in graph.graph.node if node.op_type == "Shape")
    shape.attribute.extend([helper.make_attribute("start", 1)])
    rewritten, done = rewrite_for_cpu(graph)
    assert done.channel_repeats_folded == 0
    x = np.random.default_rng(4).random((2, 1, 8, 8), dtype=np.float32)
    assert _run_all(rewritten, x)[1] == _run_all(graph, x)[1] == 3


def test_repeat_of_a_constant_expanded_to_the_batch_still_reads_the_batch():
    """Expand of a (1, 1, 8, 8) constant to the input's (N, 1, 8, 8) has its input's shape at batch 1 only: the
    convolution must keep reading the expanded tensor (it read the constant: one image for a batch of two)."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Expand", ["constant", "shape"], ["expanded"]),
             helper.make_node("Tile", ["expanded", "reps"], ["t"]),
             helper.make_node("Conv", ["t", "w"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_model(helper.make_graph(
        nodes, "expand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "reps"),
         numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.random((1, 1, 8, 8), dtype=np.float32), "constant")]),
        opset_imports=[helper.make_opsetid("", 17)])
    rewritten, done = rewrite_for_cpu(graph)
    assert done.channel_repeats_folded == 1
    x = rng.random((2, 1, 8, 8), dtype=np.float32)
    got, want = _run(rewritten, x), _run(graph, x)
    assert got.shape == want.shape == (2, 4, 8, 8)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_padded_part_that_is_a_graph_output_keeps_its_pad():
    """The split still applies, the Pad stays (merging it removed the node making a graph output: export failed)."""
    graph = _concat_graph(0.0, False)
    graph.graph.output.append(helper.make_tensor_value_info("bp", TensorProto.FLOAT, ["n", 3, 6, 6]))
    rewritten, done = rewrite_for_cpu(graph)
    assert done == CpuRewrites(concats_split=1, pads_folded=0) and "Pad" in _ops(rewritten)
    a = np.random.default_rng(6).standard_normal((2, 2, 6, 6)).astype(np.float32)
    for got, want in zip(_run_all(rewritten, a), _run_all(graph, a)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
