"""Exact rewrites of an exported graph that ONNX Runtime runs faster on CPUs.

Two patterns of the TransUNet export cost ONNX Runtime time without computing anything
(``benchmarks/speed_limits.py``: per-kernel profile of the 0.2.0 student, batch 8):

- **a grey image repeated to 3 channels** (``x.repeat(1, 3, 1, 1)`` exports as Expand +
  Tile) before the root convolution. Convolving copies of one channel equals convolving
  that channel with the kernel summed over its input channels, so the root convolution
  takes the 1-channel image directly: a third of its work, and no Expand/Tile.
- **a channel Concat feeding one convolution** (each decoder block: up-sampled map and
  skip connection). ``Conv(concat(a, b)) = Conv_a(a) + Conv_b(b)`` with the kernel split
  along its input channels; ONNX Runtime fuses the sum into the second convolution, so
  the concatenated copy is never made. When a part is zero-padded at its edges first
  (the encoder's 31 -> 32 skip Pad), the Pad becomes part of that convolution's own zero
  padding (e.g. pads 1,1,2,2). Pad has no NCHWc kernel in ONNX Runtime, so each one
  also cost two layout conversions.

The rewritten graph computes the same function; only float rounding differs (sums taken
in another order). Shapes and pad amounts are read from one run of the unrewritten
graph at batch 1 and 2 (the pass refuses values that depend on the batch), so the input's
channel, height and width must be fixed in the graph, as :func:`export_onnx` writes it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["CpuRewrites", "rewrite_for_cpu"]


@dataclass(frozen=True)
class CpuRewrites:
    """What :func:`rewrite_for_cpu` changed.

    Attributes:
        channel_repeats_folded: repeated-channel inputs folded into their convolutions.
        concats_split: Concat -> Conv pairs turned into a sum of convolutions.
        pads_folded: zero Pads merged into a convolution's padding.
    """

    channel_repeats_folded: int = 0
    concats_split: int = 0
    pads_folded: int = 0


def rewrite_for_cpu(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, CpuRewrites]:
    """Return a rewritten copy of ``model`` and what was rewritten (nothing matched: an equal copy).

    Args:
        model: a graph with one float input (N, C, H, W) whose C, H and W are fixed.

    Raises:
        ValueError: the graph's input is not (N, C, H, W) with fixed C, H, W.
    """
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    values = _GraphValues(rewritten)
    folded = _fold_channel_repeats(graph, values)
    split, pads = _split_concat_convolutions(graph, values)
    _remove_dead_nodes(graph)
    onnx.checker.check_model(rewritten)
    return rewritten, CpuRewrites(folded, split, pads)


class _GraphValues:
    """Every tensor of the original graph in one run at batch 1 (and batch 2, for checking)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        import onnxruntime as ort

        graph_input = model.graph.input[0]
        dims = graph_input.type.tensor_type.shape.dim
        fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(fixed) != 4 or any(d is None or d < 1 for d in fixed[1:]):
            raise ValueError(f"graph input {graph_input.name!r} must be (N, C, H, W) with fixed C, H, W; "
                             f"got {[d.dim_param or d.dim_value for d in dims]}")
        self.weights: Dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init)
                                               for init in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.weights[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        names = [out for node in probe.graph.node for out in node.output if out and out not in self.weights]
        present = {out.name for out in probe.graph.output}
        probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs = [out.name for out in session.get_outputs()]
        runs = []
        for batch in (1, 2):
            image = np.random.default_rng(batch).random([batch] + fixed[1:], dtype=np.float32)
            runs.append(dict(zip(outputs, session.run(outputs, {graph_input.name: image}))))
            runs[-1][graph_input.name] = image
        self._at_1, self._at_2 = runs

    def shape(self, name: str) -> Tuple[int, ...]:
        """The tensor's shape at batch 1."""
        return tuple(self.weights[name].shape) if name in self.weights else tuple(self._at_1[name].shape)

    def same_shapes(self, first: str, second: str) -> bool:
        """Whether the two tensors have equal shapes at batch 1 and at batch 2 (e.g. not a batch-1 constant and
        its broadcast to the batch)."""
        def shapes(name: str) -> Tuple[Tuple[int, ...], ...]:
            if name in self.weights:
                return (tuple(self.weights[name].shape),) * 2
            return tuple(self._at_1[name].shape), tuple(self._at_2[name].shape)

        return shapes(first) == shapes(second)

    def constant(self, name: str) -> Optional[np.ndarray]:
        """The tensor's value if it is the same at batch 1 and 2 (a weight, or computed from fixed shapes)."""
        if name in self.weights:
            return self.weights[name]
        if name not in self._at_1:
            return None
        first, second = self._at_1[name], self._at_2[name]
        return first if first.shape == second.shape and np.array_equal(first, second) else None


def _consumers(graph: onnx.GraphProto) -> Dict[str, List[onnx.NodeProto]]:
    found: Dict[str, List[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            found[name].append(node)
    return found


def _producers(graph: onnx.GraphProto) -> Dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _attributes(node: onnx.NodeProto) -> Dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _plain_conv(node: onnx.NodeProto) -> bool:
    """A Conv with explicit (or no) padding and one group: the kind these rewrites understand."""
    attributes = _attributes(node)
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    return node.op_type == "Conv" and attributes.get("group", 1) == 1 and auto_pad in (b"NOTSET", "NOTSET")


def _add_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    taken = {init.name for init in graph.initializer} | {out for node in graph.node for out in node.output}
    unique, index = name, 0
    while unique in taken:
        index += 1
        unique = f"{name}_{index}"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), unique))
    return unique


def _fold_channel_repeats(graph: onnx.GraphProto, values: _GraphValues) -> int:
    """Tile of a 1-channel tensor along channels, read only by Convs and by Shapes of N/H/W: fold it."""
    producers, consumers = _producers(graph), _consumers(graph)
    folded = 0
    for tile in [node for node in graph.node if node.op_type == "Tile"]:
        source, repeats = tile.input[0], values.constant(tile.input[1])
        if repeats is None or len(values.shape(source)) != 4 or values.shape(source)[1] != 1:
            continue
        if list(repeats) != [1, int(repeats[1]), 1, 1]:
            continue
        expand = producers.get(source)
        if expand is not None and expand.op_type == "Expand" and \
                values.same_shapes(expand.input[0], source) and len(consumers[source]) == 1:
            source = expand.input[0]  # an Expand to its own shape copies nothing
        readers = consumers[tile.output[0]]
        convs = [n for n in readers if _plain_conv(n) and n.input[0] == tile.output[0]
                 and n.input[1] in values.weights]
        shapes = [n for n in readers if n.op_type == "Shape" and _reads_no_channel_count(n, consumers, values)]
        if not convs or len(convs) + len(shapes) != len(readers) or tile.output[0] in _graph_outputs(graph):
            continue
        for conv in convs:
            summed = values.weights[conv.input[1]].sum(axis=1, keepdims=True, dtype=np.float64)
            conv.input[1] = _add_initializer(graph, conv.input[1] + "_channel_sum", summed.astype(np.float32))
            conv.input[0] = source
        for shape in shapes:
            shape.input[0] = source
        folded += 1
    return folded


def _reads_no_channel_count(shape: onnx.NodeProto, consumers, values: _GraphValues) -> bool:
    """Every reader of this Shape's output takes a single N, H or W entry (Gather on axis 0)."""
    if "start" in _attributes(shape) or "end" in _attributes(shape):
        return False  # a slice of the dimensions (opset 15): its indices are not the tensor's axes
    readers = consumers[shape.output[0]]
    for reader in readers:
        if reader.op_type != "Gather" or _attributes(reader).get("axis", 0) != 0:
            return False
        index = values.constant(reader.input[1])
        if index is None or index.ndim != 0 or int(index) % 4 == 1:
            return False
    return bool(readers)


def _graph_outputs(graph: onnx.GraphProto) -> set:
    return {out.name for out in graph.output}


def _split_concat_convolutions(graph: onnx.GraphProto, values: _GraphValues) -> Tuple[int, int]:
    """Concat(axis 1) read only by one Conv -> one Conv per part, summed (zero Pads merged into them)."""
    producers, consumers = _producers(graph), _consumers(graph)
    replacements: Dict[str, List[onnx.NodeProto]] = {}
    removed = set()
    split = pads = 0
    for concat in [node for node in graph.node if node.op_type == "Concat"]:
        rank = len(values.shape(concat.output[0]))
        if rank != 4 or _attributes(concat).get("axis") % rank != 1 or concat.output[0] in _graph_outputs(graph):
            continue
        readers = consumers[concat.output[0]]
        if len(readers) != 1 or not _plain_conv(readers[0]) or readers[0].input[0] != concat.output[0] \
                or readers[0].input[1] not in values.weights:
            continue
        conv = readers[0]
        attributes = _attributes(conv)
        weight = values.weights[conv.input[1]]
        kernel_rank = weight.ndim - 2
        conv_pads = list(attributes.get("pads", [0] * 2 * kernel_rank))
        parts, start = [], 0
        for index, part in enumerate(concat.input):
            channels = values.shape(part)[1]
            source, part_pads = part, conv_pads
            # A padded part that is also a graph output keeps its Pad (removing it would leave the output unmade).
            spatial = None if part in _graph_outputs(graph) else _zero_pad_amounts(producers.get(part), consumers,
                                                                                  values)
            if spatial is not None:
                source = producers[part].input[0]
                part_pads = [p + q for p, q in zip(conv_pads, spatial)]
                removed.add(producers[part].name or producers[part].output[0])
                pads += 1
            part_weight = _add_initializer(graph, f"{conv.input[1]}_part{index}", weight[:, start:start + channels])
            inputs = [source, part_weight] + ([conv.input[2]] if index == 0 and len(conv.input) > 2 else [])
            parts.append(helper.make_node("Conv", inputs, [f"{conv.output[0]}_part{index}"],
                                          name=f"{conv.name}_part{index}", **{**attributes, "pads": part_pads}))
            start += channels
        nodes = list(parts)
        total = parts[0].output[0]
        for index, part in enumerate(parts[1:], start=1):
            last = index == len(parts) - 1
            out = conv.output[0] if last else f"{conv.output[0]}_sum{index}"
            nodes.append(helper.make_node("Add", [total, part.output[0]], [out], name=f"{conv.name}_sum{index}"))
            total = out
        replacements[_key(conv)] = nodes
        removed.add(_key(concat))
        split += 1
    if replacements:
        kept: List[onnx.NodeProto] = []
        for node in graph.node:
            if _key(node) in replacements:
                kept.extend(replacements[_key(node)])
            elif _key(node) not in removed:
                kept.append(node)
        del graph.node[:]
        graph.node.extend(kept)
    return split, pads


def _key(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _zero_pad_amounts(pad: Optional[onnx.NodeProto], consumers, values: _GraphValues) -> Optional[List[int]]:
    """The Conv-style spatial pads [h0, w0, h1, w1] of a constant zero Pad read only here, else None."""
    if pad is None or pad.op_type != "Pad" or len(consumers[pad.output[0]]) != 1:
        return None
    mode = _attributes(pad).get("mode", b"constant")
    if mode not in (b"constant", "constant") or len(pad.input) < 2:
        return None
    amounts = values.constant(pad.input[1])
    fill = values.constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
    if len(pad.input) > 3 and pad.input[3]:  # axes: keep it simple, leave such Pads alone
        return None
    if amounts is None or fill is None or np.any(fill != 0):
        return None
    amounts = [int(a) for a in amounts]
    rank = len(amounts) // 2
    begin, end = amounts[:rank], amounts[rank:]
    if rank < 3 or any(a < 0 for a in amounts) or any(begin[:2]) or any(end[:2]):
        return None
    return begin[2:] + end[2:]


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers nothing reads any more (the graph outputs are what is read)."""
    needed = _graph_outputs(graph)
    kept: List[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = {name for node in graph.node for name in node.input}
    initializers = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)

