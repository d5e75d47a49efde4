"""How fast `kdseg segment` could be on this machine: the network against MLAS per layer, the rest at its floor.

    python benchmarks/speed_limits.py [--ct FILE.nii.gz] [--slices 150] [--batch 8]
                                      [--batches 4,8,16,32] [--threads N] [--thread-spinning auto]
                                      [--runs 12] [--option-batches 8,16] [--onnx FILE]
                                      [--skip-kdseg] [--json FILE]

Two questions of issue 12, answered side by side in one run on this machine:

(1) Can the network reach 85% of the machine's fp32 matmul peak? The peak is ONNX
    Runtime's own MLAS kernel on a 2048^3 MatMul (``segment_volume.mlas_peak_gflops``),
    measured before and after everything else, best of the two.

    The network's rate is timed as ``kdseg segment`` runs it: the model opened by
    ``Segmenter.from_registry`` (CPU, ``--threads`` and ``--thread-spinning`` as given,
    kdseg's defaults otherwise), whose layout comes from the Lib's ``run_layout`` (on two
    cores: two concurrent one-thread calls sharing one session, nothing spinning), the
    calls made through the Lib's ``NetworkCalls`` with ``segment_image``'s worker count,
    in streams of :data:`STREAM_BATCHES` batches: useful FLOPs over the median stream's
    time per batch (best stream too). It is the network alone: in ``kdseg segment`` the
    pipeline's own thread works next to it.

    The per-kernel profile is something else: ONE call at a time on one session of
    ``--threads`` intra-op threads (default: one per usable core) spinning during the run,
    with ``enable_profiling`` (ONNX Runtime profiles a session's calls; a single call puts
    every thread on each kernel, so its rates compare with the peak on the same threads).
    That single call is also timed un-profiled, interleaved with kdseg's layout. From the
    profile: every kernel's duration, per node type and per convolution/MatMul. FLOPs are
    counted from the graph's real shapes (one run
    of the unoptimised graph with every Conv/MatMul input and output as a graph output):
    Conv = 2 N Cout Hout Wout Cin/groups kh kw, MatMul = 2 x output elements x K. They
    are the *useful* FLOPs: where ONNX Runtime pads channels to its NCHWc block (the
    9-class head runs as 16 channels), the padding is not counted as work. Then each
    distinct Conv/MatMul shape runs ALONE, as a one-node ONNX graph with the model's own
    weights and the same session options, profiled the same way (its own kernel only,
    not the layout reorders ONNX Runtime puts around it): the rate MLAS reaches for that
    shape. Kernel times are the best of ``--runs`` runs (alone: also of three sessions):
    on a shared machine a kernel whose second thread another process holds runs at half
    speed, sometimes for a whole session, and that is not the kernel's limit. Summed
    FLOP-weighted over the network, these give two bounds of the single call: every Conv
    and MatMul at its isolated rate and everything else free (the most any graph-level
    clean-up or session option can reach with these layer shapes in one call), and the
    same with the other kernels (resize, concat, layout reorders, layer norms...) at their
    measured time. They bound the single call; kdseg's concurrent calls run each kernel on
    fewer threads (one, on two cores), at rates not measured here. A batch-size sweep
    repeats kdseg's rate, the single call's and both bounds per batch. The session options an ONNX Runtime user
    could change (graph optimisation level, memory pattern and arena, denormals, config
    keys ONNX Runtime 1.32 reads) are timed one change at a time in kdseg's layout against
    kdseg's own sessions, interleaved, next to other call layouts (one call on all
    threads, spinning or sleeping, as kdseg ran before its concurrent calls; one thread;
    one thread more, laid out by ``run_layout``).
    ``--onnx`` profiles another graph of the same model (e.g. a rewritten export; kdseg's
    layout then runs it through a one-entry registry): its useful FLOPs are its own, so
    compare times, not rates, when a rewrite removes work.

(2) What is the least the work around the network can cost? The floor of what a
    ``kdseg segment`` run cannot avoid: a fresh Python interpreter importing what
    ``segment`` needs (numpy, SimpleITK, onnxruntime; bare interpreter start-up shown
    too), the fastest gzip decode of the input available here (zlib, and ISA-L when
    ``isal`` is installed; the file's bytes already in memory), one memory-bandwidth
    pass over the decoded input (a copy of the int16 volume), and one write of the uint8
    label map as kdseg writes it (ITK's .nii.gz writer, compressed). Each is the best of
    a few repeats. Against the network's time for the same slices as kdseg runs it (its
    layout above, batch ``--batch``), the share of the wall the not-network work would
    take even at that floor: run one after the other, and with perfect overlap on the
    machine's cores (all not-network work spread over every core, the network's cores
    included: on a machine whose cores the network already keeps busy, that is the most
    overlapping stages can win). The same CT also runs once through ``kdseg segment``
    (the label map written is the one the write floor writes; the real run's stage split
    is printed next to the floor).

The CT is the real example CT of ../shared/data resampled to 512 x 512 x N, as
``segment_volume.py`` builds it (``--ct`` reads a copy of it instead of building it).
Figures are ratios measured side by side in one run; absolute times move with the
machine's load. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.inference.network_calls import NetworkCalls
from KDSegmentationLib.inference.onnx_engine import _session_options
from KDSegmentationLib.inference.pipeline import Segmenter, network_overlap_helps
from KDSegmentationLib.inference.run_layout import RunLayout, run_layout
from KDSegmentationLib.inference.stage_clock import StageClock
from KDSegmentationLib.inference.thread_limits import bounded_threads, usable_cores
from KDSegmentationLib.weights.model_registry import ModelRegistry, load_registry
from segment_volume import mlas_peak_gflops, registry_for_onnx, resampled_ct, run_kdseg

# Elementwise ops ONNX Runtime fuses into the Conv before them; the fused kernel is named
# after the last fused op's output tensor (plus "_nchwc" in the NCHWc layout).
_FUSABLE_AFTER_CONV = {"Relu", "Add", "Sum", "Clip", "Sigmoid", "LeakyRelu", "HardSigmoid", "Tanh"}
_GEMM_OPS = {"Conv", "MatMul", "Gemm"}
STREAM_BATCHES = 4
"""Batches per timed stream of network calls: with two calls at a time, two rounds in which both are busy."""

# run(batch (N, 1, H, W) float32) -> logits, and the worker threads calling it (0: inline), as NetworkCalls takes them.
CallLayout = Tuple[Callable[[np.ndarray], np.ndarray], int]


@dataclasses.dataclass(frozen=True)
class KdsegNetwork:
    """The network as ``kdseg segment`` runs it: the Lib's own engine, layout and call workers.

    Args:
        run: the engine's ``run`` (``Segmenter.from_registry``'s CPU engine).
        workers: threads calling it at once (``NetworkCalls``; 0: inline, as on one core).
        layout: ``run_layout(threads)``: concurrent calls and the intra-op threads of their shared session.
        spinning: whether the session's threads spin during a run (the ``--thread-spinning`` policy's choice).
        spinning_reason: why, as the engine logs it.
    """

    run: Callable[[np.ndarray], np.ndarray]
    workers: int
    layout: RunLayout
    spinning: bool
    spinning_reason: str

    def describe(self) -> str:
        calls = f"{self.workers} call(s) at a time" if self.workers else "one call at a time, inline"
        return (f"{calls} on one session of {self.layout.session_threads} intra-op thread(s), threads "
                f"{'spin during a run' if self.spinning else 'sleep'}")


def kdseg_network(registry: Union[None, Path, ModelRegistry], model_id: Optional[str], threads: Optional[int],
                  spinning_policy: str) -> KdsegNetwork:
    """Open the model as ``kdseg segment`` does (``Segmenter.from_registry``, CPU) and take its call layout.

    Args:
        registry / model_id: as ``kdseg --registry ... segment --model ...``.
        threads: ``--threads`` (None: kdseg's default, one per usable core).
        spinning_policy: ``--thread-spinning``: "auto", "on" or "off".
    """
    segmenter = Segmenter.from_registry(model_id, device="cpu", threads=threads, registry=registry,
                                        allow_download=False, spinning=spinning_policy)
    workers = segmenter.concurrent_runs if network_overlap_helps() else 0  # segment_image's own rule
    engine = segmenter.engine
    return KdsegNetwork(engine.run, workers, run_layout(threads), engine.spinning, engine.spinning_reason)


def session_call(session) -> Callable[[np.ndarray], np.ndarray]:
    """``run(batch) -> logits`` of a bare ONNX Runtime session (its first input and output)."""
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def stream_seconds(run: Callable[[np.ndarray], np.ndarray], workers: int, batch: np.ndarray, batches: int) -> float:
    """Wall seconds of ``batches`` calls of ``run`` on ``batch`` through ``NetworkCalls`` with ``workers``."""
    with NetworkCalls(run, workers, StageClock()) as calls:
        start = time.perf_counter()
        futures = [calls.submit(batch) for _ in range(batches)]
        for future in futures:
            future.result()
        return time.perf_counter() - start


def interleaved_stream_times(layouts: Dict[str, CallLayout], feeds: Dict[int, np.ndarray], repeats: int
                             ) -> Dict[str, Dict[int, List[float]]]:
    """Seconds per slice of streams of :data:`STREAM_BATCHES` calls, per layout and batch, repeats interleaved.

    Args:
        layouts: name -> (run, workers).
        feeds: batch size -> (N, 1, H, W) float32 input.
        repeats: timed streams per layout and batch (after one warm-up stream each).
    """
    times: Dict[str, Dict[int, List[float]]] = {name: {b: [] for b in feeds} for name in layouts}
    for run, workers in layouts.values():
        for feed in feeds.values():
            stream_seconds(run, workers, feed, STREAM_BATCHES)
    for _ in range(repeats):
        for b, feed in feeds.items():
            for name, (run, workers) in layouts.items():
                times[name][b].append(stream_seconds(run, workers, feed, STREAM_BATCHES) / (STREAM_BATCHES * b))
    return times


@dataclasses.dataclass(frozen=True)
class GemmLayer:
    """One Conv/MatMul node of the graph with its real shapes.

    Args:
        node: the node's name in the exported graph.
        op: "Conv", "MatMul" or "Gemm".
        shape: a readable shape, e.g. "3x3 320->64 @16x16" (N left out).
        flops: useful FLOPs of one run at the profiled batch.
        tensors: output tensor names the node's (fused) kernel can be named after.
        alone: a one-node ONNX model of the same shape (bytes) and its input feed shapes.
    """

    node: str
    op: str
    shape: str
    flops: float
    tensors: Tuple[str, ...]
    alone: bytes
    feed: Tuple[Tuple[str, Tuple[int, ...]], ...]


def tensor_shapes(model, feed: Dict[str, np.ndarray], names: Sequence[str]) -> Dict[str, Tuple[int, ...]]:
    """Shapes of the named tensors in one run of the unoptimised graph (all graph outputs)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {out.name for out in probe.graph.output}
    for name in names:
        if name and name not in present:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            present.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = [out.name for out in session.get_outputs()]
    return {name: tuple(value.shape) for name, value in zip(outputs, session.run(outputs, feed))}


def _fused_names(graph, start: str) -> List[str]:
    """``start`` and the outputs of the single-consumer elementwise chain after it (fusion candidates)."""
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    names, current = [start], start
    while len(consumers[current]) == 1 and consumers[current][0].op_type in _FUSABLE_AFTER_CONV:
        current = consumers[current][0].output[0]
        names.append(current)
    return names


def gemm_layers(onnx_path: Path, batch: int, img_size: int) -> List[GemmLayer]:
    """Every Conv/MatMul/Gemm of the model with its shapes, FLOPs and a one-node copy.

    Args:
        onnx_path: the model; its first input takes (N, 1, img_size, img_size).
        batch: N.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    constants = {node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in graph.node
                 if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"}
    weights = {**constants, **initializers}
    nodes = [node for node in graph.node if node.op_type in _GEMM_OPS]
    wanted = [name for node in nodes for name in list(node.input) + list(node.output) if name not in weights]
    input_name = graph.input[0].name
    feed = {input_name: np.random.default_rng(0).random((batch, 1, img_size, img_size), dtype=np.float32)}
    shapes = tensor_shapes(model, feed, wanted)
    shapes.update({name: tuple(value.shape) for name, value in weights.items()})
    shapes[input_name] = feed[input_name].shape
    layers = []
    for node in nodes:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        out = shapes[node.output[0]]
        if node.op_type == "Conv":
            w = shapes[node.input[1]]
            group = attributes.get("group", 1)
            flops = 2.0 * out[0] * out[1] * out[2] * out[3] * w[1] * w[2] * w[3]
            stride = attributes.get("strides", [1, 1])
            x = shapes[node.input[0]]
            shape = (f"{w[2]}x{w[3]}{'/' + str(stride[0]) if stride[0] > 1 else ''} {x[1]}->{w[0]}"
                     f"{' g' + str(group) if group > 1 else ''} @{out[2]}x{out[3]}")
        elif node.op_type == "MatMul":
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            flops = 2.0 * float(np.prod(out)) * a[-1]
            shape = f"{'x'.join(map(str, a[-2:]))} * {'x'.join(map(str, b[-2:]))}" + \
                    (f" x{int(np.prod(out[:-2])) // batch}" if int(np.prod(out[:-2])) > batch else "")
        else:  # Gemm
            a = shapes[node.input[0]]
            k = a[0] if attributes.get("transA", 0) else a[1]
            flops = 2.0 * float(np.prod(out)) * k
            shape = f"{out[0]}x{k} * {k}x{out[1]}"
        inputs, feeds, inits = [], [], []
        for position, name in enumerate(node.input):
            if not name:
                inputs.append("")
                continue
            alias = f"in{position}"
            inputs.append(alias)
            if name in weights:
                inits.append(numpy_helper.from_array(np.asarray(weights[name]), alias))
            else:
                feeds.append((alias, tuple(shapes[name])))
        alone_node = helper.make_node(node.op_type, inputs, ["out"], **attributes)
        alone_graph = helper.make_graph(
            [alone_node], "alone",
            [helper.make_tensor_value_info(alias, onnx.TensorProto.FLOAT, list(s)) for alias, s in feeds],
            [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, list(out))], inits)
        alone = helper.make_model(alone_graph, opset_imports=[helper.make_opsetid("", 17)])
        layers.append(GemmLayer(node.name, node.op_type, shape, flops, tuple(_fused_names(graph, node.output[0])),
                                alone.SerializeToString(), tuple(feeds)))
    return layers


def kernel_times(session, feed: Dict[str, np.ndarray], runs: int) -> Tuple[List[Dict[str, object]], float]:
    """Kernel events of the last ``runs`` runs of a profiling session, and their median run time (s).

    The session must have been created with ``enable_profiling``; two warm-up runs come first.
    """
    for _ in range(2):
        session.run(None, feed)
    for _ in range(runs):
        session.run(None, feed)
    with open(session.end_profiling(), encoding="utf-8") as handle:
        events = json.load(handle)
    os.remove(handle.name)
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-runs:]
    kernels = []
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        for index, (start, end) in enumerate(windows):
            if start <= event["ts"] <= end:
                kernels.append({"run": index, "name": event["name"][: -len("_kernel_time")],
                                "op": event["args"]["op_name"], "us": float(event["dur"])})
                break
    return kernels, float(np.median([end - start for start, end in windows])) / 1e6


def profiled_session(model, threads: Optional[int], spinning: bool, prefix: str, keep_spinning: bool = False):
    """A profiling session of kdseg's session options (``_session_options``) with ``threads`` intra-op threads.

    ``keep_spinning``: threads also spin between runs.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # overwriting a config entry below logs a warning
    options = _session_options(threads, spinning=spinning or keep_spinning)
    if keep_spinning:
        options.add_session_config_entry("session.force_spinning_stop", "0")
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def per_node_best(kernels: List[Dict[str, object]]) -> Dict[Tuple[str, str], float]:
    """Best (least) µs per (kernel name, op) over the runs (a kernel missing from a run counts 0).

    The best, not the median: on a shared machine a kernel whose second thread another
    process holds runs at half speed for a while, whole runs long.
    """
    runs = 1 + max(k["run"] for k in kernels)
    per: Dict[Tuple[str, str], List[float]] = defaultdict(lambda: [0.0] * runs)
    for k in kernels:
        per[(k["name"], k["op"])][k["run"]] += k["us"]
    return {key: float(min(values)) for key, values in per.items()}


def match_layer(kernel_name: str, layers: Sequence[GemmLayer]) -> Optional[GemmLayer]:
    """The Conv/MatMul a profiled kernel runs: by fused output tensor, else by node-name prefix."""
    stripped = kernel_name[: -len("_nchwc")] if kernel_name.endswith("_nchwc") else kernel_name
    for layer in layers:
        if stripped in layer.tensors or stripped == layer.node:
            return layer
    prefixed = [layer for layer in layers if layer.node and kernel_name.startswith(layer.node + "/")]
    return max(prefixed, key=lambda layer: len(layer.node)) if prefixed else None


def network_profile(onnx_path: Path, layers: Sequence[GemmLayer], batch: int, img_size: int, threads: int,
                    kdseg: KdsegNetwork, runs: int, tmp: Path) -> Dict[str, object]:
    """The model's kernels per node type and per Conv/MatMul in one call, and un-profiled times per batch.

    The profile is ONE call at a time on one session of ``threads`` intra-op threads spinning
    during the run (ONNX Runtime profiles a session's calls; each kernel's rate with all
    threads on it). Un-profiled, the same single call and the network as kdseg runs it
    (``kdseg``: concurrent calls sharing one session) are timed interleaved, in streams of
    :data:`STREAM_BATCHES` batches: ``run_s`` is kdseg's, ``one_call_run_s`` the single call's.
    """
    import onnxruntime as ort

    session = profiled_session(str(onnx_path), threads, True, str(tmp / "network"))
    batch_input = np.random.default_rng(1).random((batch, 1, img_size, img_size), dtype=np.float32)
    feed = {session.get_inputs()[0].name: batch_input}
    kernels, profiled_run_s = kernel_times(session, feed, runs)
    plain = ort.InferenceSession(str(onnx_path), _session_options(threads, spinning=True),
                                 providers=["CPUExecutionProvider"])
    streams = interleaved_stream_times({"kdseg": (kdseg.run, kdseg.workers), "one call": (session_call(plain), 0)},
                                       {batch: batch_input}, runs)
    times = [s * batch for s in streams["kdseg"][batch]]
    one_call = [s * batch for s in streams["one call"][batch]]
    per_kernel = per_node_best(kernels)
    by_op: Dict[str, float] = defaultdict(float)
    by_layer: Dict[str, float] = defaultdict(float)
    unmatched = []
    for (name, op), us in per_kernel.items():
        computes = op in ("Conv", "MatMul", "FusedMatMul", "FusedConv", "Gemm", "FusedGemm")
        layer = match_layer(name, layers) if computes else None
        by_op["Conv" if op == "FusedConv" else op] += us
        if layer is not None:
            by_layer[layer.node] += us
        elif computes:
            unmatched.append(name)
    return {"run_s": float(np.median(times)), "best_run_s": min(times),
            "one_call_run_s": float(np.median(one_call)), "one_call_best_run_s": min(one_call),
            "profiled_run_s": profiled_run_s,
            "kernels_s": sum(per_kernel.values()) / 1e6,
            "by_op_s": {op: us / 1e6 for op, us in by_op.items()},
            "by_layer_s": {node: us / 1e6 for node, us in by_layer.items()}, "unmatched": unmatched}


def isolated_times(layers: Sequence[GemmLayer], threads: Optional[int], spinning: bool, runs: int,
                   tmp: Path, sessions: int = 3) -> Dict[str, float]:
    """Best kernel seconds of each distinct Conv/MatMul shape run alone (reorders around it excluded).

    Each shape runs in ``sessions`` sessions one after the other (the best counts): on a
    shared machine a kernel whose second thread another process holds runs at half speed,
    sometimes for a whole session.
    """
    by_model: Dict[bytes, float] = {}
    result = {}
    rng = np.random.default_rng(2)
    for layer in layers:
        if layer.alone not in by_model:
            # A one-kernel run would time waking the other thread too: in the profiled call the
            # threads are already awake (spinning) when a kernel starts, so here they keep spinning.
            feed = {alias: rng.random(shape, dtype=np.float32) for alias, shape in layer.feed}
            best = float("inf")
            for _ in range(sessions):
                session = profiled_session(layer.alone, threads, spinning, str(tmp / "alone"), keep_spinning=True)
                kernels, _ = kernel_times(session, feed, runs)
                compute = [k for k in kernels if not k["op"].startswith("Reorder")]
                best = min(best, sum(per_node_best(compute).values()) / 1e6)
                del session
            by_model[layer.alone] = best
        result[layer.node] = by_model[layer.alone]
    return result


def network_limits(onnx_path: Path, batch: int, img_size: int, threads: int, kdseg: KdsegNetwork,
                   runs: int, tmp: Path) -> Dict[str, object]:
    """Profile, FLOPs and isolated rates of the model at one batch size (seconds per batch).

    Profile and isolated shapes: one call on ``threads`` spinning threads; ``profile["run_s"]``: kdseg's layout.
    """
    layers = gemm_layers(onnx_path, batch, img_size)
    profile = network_profile(onnx_path, layers, batch, img_size, threads, kdseg, runs, tmp)
    alone = isolated_times(layers, threads, True, runs, tmp)
    gemm_flops = sum(layer.flops for layer in layers)
    gemm_in_network = sum(profile["by_layer_s"].get(layer.node, 0.0) for layer in layers)
    other_kernels = profile["kernels_s"] - gemm_in_network
    return {"batch": batch, "layers": layers, "profile": profile, "alone_s": alone, "flops": gemm_flops,
            "gemm_in_network_s": gemm_in_network, "other_kernels_s": other_kernels,
            "gemm_alone_s": sum(alone.values())}


def print_network(limits: Dict[str, object], peak: float, kdseg: KdsegNetwork, threads: int) -> Dict[str, object]:
    batch, profile, layers = limits["batch"], limits["profile"], limits["layers"]
    flops, run_s = limits["flops"], profile["run_s"]
    rate = flops / run_s / 1e9
    best = flops / profile["best_run_s"] / 1e9
    one_call = flops / profile["one_call_run_s"] / 1e9
    one_call_best = flops / profile["one_call_best_run_s"] / 1e9
    print(f"\n(1) Network at batch {batch}: {flops / batch / 1e9:.3f} GFLOP per slice (Conv + MatMul, useful).")
    print(f"  as kdseg runs it ({kdseg.describe()}; streams of {STREAM_BATCHES} batches, the network alone): "
          f"{1e3 * run_s / batch:.3f} ms per slice (median) = {rate:.0f} GFLOP/s = {100 * rate / peak:.0f}% of the "
          f"MLAS peak; best {100 * best / peak:.0f}%")
    print(f"  one call at a time on one session of {threads} threads spinning during the run (what the per-kernel "
          f"profile and the bounds below are): {1e3 * profile['one_call_run_s'] / batch:.3f} ms per slice = "
          f"{100 * one_call / peak:.0f}% of peak; best {100 * one_call_best / peak:.0f}%")
    print(f"  per-kernel profile, that single call: profiled run {1e3 * profile['profiled_run_s'] / batch:.3f} "
          f"ms/slice, of which kernels {1e3 * profile['kernels_s'] / batch:.3f} ms (the rest: ONNX Runtime between "
          f"kernels)")
    print("  per node type (best kernel time per slice, share of kernel time, GFLOP/s where it computes):")
    gemm_by_op: Dict[str, float] = defaultdict(float)
    for layer in layers:
        gemm_by_op[layer.op] += layer.flops
    for op, seconds in sorted(profile["by_op_s"].items(), key=lambda item: -item[1]):
        share = seconds / profile["kernels_s"]
        op_flops = gemm_by_op.get("MatMul", 0.0) if op in ("MatMul", "FusedMatMul") else gemm_by_op.get(op, 0.0)
        if op in ("MatMul", "FusedMatMul"):  # one row for both kinds of MatMul kernel
            if op == "FusedMatMul":
                continue
            seconds = seconds + profile["by_op_s"].get("FusedMatMul", 0.0)
            share = seconds / profile["kernels_s"]
        note = f"{op_flops / seconds / 1e9:7.0f} GFLOP/s = {100 * op_flops / seconds / 1e9 / peak:3.0f}% of peak" \
            if op_flops else ""
        label = "MatMul (+FusedMatMul)" if op == "MatMul" else op
        print(f"    {label:<24}{1e6 * seconds / batch:8.1f} µs {100 * share:5.1f}%  {note}")
    print("  per Conv/MatMul shape (best µs per slice in the profiled call vs the same shape alone, same options):")
    print(f"    {'layer':<44}{'shape':<26}{'MFLOP':>7}{'net µs':>8}{'net %pk':>8}{'alone µs':>9}{'alone %pk':>10}")
    rows = []
    for layer in layers:
        net = profile["by_layer_s"].get(layer.node, float("nan"))
        alone = limits["alone_s"][layer.node]
        rows.append({"layer": layer.node, "op": layer.op, "shape": layer.shape,
                     "mflop_per_slice": layer.flops / batch / 1e6,
                     "network_us_per_slice": 1e6 * net / batch, "alone_us_per_slice": 1e6 * alone / batch,
                     "network_share_of_peak": layer.flops / net / 1e9 / peak,
                     "alone_share_of_peak": layer.flops / alone / 1e9 / peak})
        name = layer.node.strip("/").replace("/Conv", "").replace("/MatMul", "")
        print(f"    {name[-43:]:<44}{layer.shape[:25]:<26}{layer.flops / batch / 1e6:7.1f}"
              f"{1e6 * net / batch:8.1f}{100 * rows[-1]['network_share_of_peak']:7.0f}%"
              f"{1e6 * alone / batch:9.1f}{100 * rows[-1]['alone_share_of_peak']:9.0f}%")
    if profile["unmatched"]:
        print(f"    (kernels not matched to a graph node, counted in 'other': {', '.join(profile['unmatched'])})")
    fastest = max(rows, key=lambda row: row["alone_share_of_peak"])
    print(f"  fastest shape alone: {fastest['shape']} at {100 * fastest['alone_share_of_peak']:.0f}% of the 2048^3 "
          f"peak (a mid-size GEMM that fits the caches can beat the big one)")
    gemm_alone, other = limits["gemm_alone_s"], limits["other_kernels_s"]
    bound_free = flops / gemm_alone / 1e9
    bound_other = flops / (gemm_alone + other) / 1e9
    print(f"  Conv+MatMul kernels: {1e6 * limits['gemm_in_network_s'] / batch:.0f} µs/slice in the profiled call "
          f"({100 * flops / limits['gemm_in_network_s'] / 1e9 / peak:.0f}% of peak while they run), "
          f"{1e6 * gemm_alone / batch:.0f} µs alone; other kernels {1e6 * other / batch:.0f} µs/slice")
    print(f"  bounds of one call on {threads} threads (kernels with every thread on them; kdseg's concurrent calls run "
          f"each kernel on {kdseg.layout.session_threads} thread(s), whose rates are not measured here):")
    print(f"  bound, every Conv/MatMul at its isolated rate and nothing else costing time: {bound_free:.0f} GFLOP/s "
          f"= {100 * bound_free / peak:.0f}% of peak")
    print(f"  bound, the same with the other kernels as measured: {bound_other:.0f} GFLOP/s "
          f"= {100 * bound_other / peak:.0f}% of peak (one call now: {100 * one_call / peak:.0f}%; "
          f"as kdseg runs it: {100 * rate / peak:.0f}%)")
    return {"batch": batch, "gflop_per_slice": flops / batch / 1e9, "ms_per_slice": 1e3 * run_s / batch,
            "gflops": rate, "share_of_peak": rate / peak, "best_run_share_of_peak": best / peak,
            "one_call_ms_per_slice": 1e3 * profile["one_call_run_s"] / batch,
            "one_call_share_of_peak": one_call / peak, "one_call_best_run_share_of_peak": one_call_best / peak,
            "kernels_ms_per_slice": 1e3 * profile["kernels_s"] / batch,
            "by_op_us_per_slice": {op: 1e6 * s / batch for op, s in profile["by_op_s"].items()},
            "layers": rows, "bound_gemm_only_share_of_peak": bound_free / peak,
            "bound_with_other_kernels_share_of_peak": bound_other / peak}


def option_variants(kdseg: KdsegNetwork, threads: int) -> Dict[str, Tuple[object, int]]:
    """kdseg's sessions and call layout, and the variations an ONNX Runtime user could set instead.

    Every variant changes one thing against what ``kdseg segment`` runs (``kdseg``: the
    session options of ``_session_options`` with the layout's intra-op threads and the
    engine's spinning choice, called by the layout's workers): one session option (config
    keys ONNX Runtime 1.32 reads) in the same layout, or the layout itself (one call at a
    time on ``threads`` threads, as kdseg ran before its concurrent calls; one thread; one
    thread more, laid out by ``run_layout``).

    Returns:
        name -> (session options, workers calling the session: 0 = one call at a time).
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # overwriting a config entry logs a warning
    session_threads, spinning, workers = kdseg.layout.session_threads, kdseg.spinning, kdseg.workers

    def variant(threads=session_threads, spinning=spinning, level=None, mem_pattern=None, arena=None, entries=()):
        options = _session_options(threads, spinning=spinning)
        if level is not None:
            options.graph_optimization_level = level
        if mem_pattern is not None:
            options.enable_mem_pattern = mem_pattern
        if arena is not None:
            options.enable_cpu_mem_arena = arena
        for key, value in entries:
            options.add_session_config_entry(key, value)
        return options

    level = ort.GraphOptimizationLevel
    more = run_layout(threads + 1)
    variants = {
        "kdseg's": (variant(), workers),
        "ORT_ENABLE_EXTENDED": (variant(level=level.ORT_ENABLE_EXTENDED), workers),
        "ORT_ENABLE_BASIC": (variant(level=level.ORT_ENABLE_BASIC), workers),
        "no memory pattern": (variant(mem_pattern=False), workers),
        "no CPU memory arena": (variant(arena=False), workers),
        "denormals as zero": (variant(entries=[("session.set_denormal_as_zero", "1")]), workers),
        "dynamic_block_base 4": (variant(entries=[("session.dynamic_block_base", "4")]), workers),
        "NCHWc pointwise batch 256": (variant(entries=[("mlas.nchwc_pointwise_conv_max_input_channel_batch",
                                                        "256")]), workers)}
    if session_threads > 1:  # a one-thread session has no pool thread that could spin
        variants[f"threads {'sleep' if spinning else 'spin'}"] = (variant(spinning=not spinning), workers)
    variants.update({
        f"1 call x {threads} threads, spinning": (variant(threads=threads, spinning=True), 0),
        f"1 call x {threads} threads, sleeping": (variant(threads=threads, spinning=False), 0),
        "1 call x 1 thread": (variant(threads=1, spinning=False), 0),
        f"{threads + 1} threads: {more.concurrent_runs} calls x {more.session_threads}":
            (variant(threads=more.session_threads), more.concurrent_runs)})
    return variants


def options_sweep(onnx_path: Path, img_size: int, kdseg: KdsegNetwork, threads: int, batches: Sequence[int],
                  repeats: int) -> Dict[str, Dict[int, List[float]]]:
    """Seconds per slice of every :func:`option_variants` layout per batch, streams interleaved."""
    import onnxruntime as ort

    layouts = {}
    for name, (options, workers) in option_variants(kdseg, threads).items():
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        layouts[name] = (session_call(session), workers)
    rng = np.random.default_rng(3)
    feeds = {b: rng.random((b, 1, img_size, img_size), dtype=np.float32) for b in batches}
    return interleaved_stream_times(layouts, feeds, repeats)


def print_options(times: Dict[str, Dict[int, List[float]]], kdseg: KdsegNetwork) -> Dict[str, Dict[int, float]]:
    batches = list(next(iter(times.values())))
    base = {b: float(np.median(times["kdseg's"][b])) for b in batches}
    print(f"\n  session options and call layouts, one change each against kdseg's ({kdseg.describe()}); the network "
          f"alone, streams of {STREAM_BATCHES} batches, median ms per slice, interleaved; ratio: kdseg's time / this "
          f"one's, > 1 is faster:")
    print(f"    {'variant':<34}" + "".join(f"{'batch ' + str(b):>20}" for b in batches))
    table = {}
    for variant, per in times.items():
        medians = {b: float(np.median(v)) for b, v in per.items()}
        table[variant] = {b: base[b] / medians[b] for b in batches}
        print(f"    {variant:<34}" + "".join(f"{1e3 * medians[b]:>11.3f} ({base[b] / medians[b]:.2f}x)"
                                              for b in batches))
    return table


def best_of(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def startup_floor(repeats: int) -> Dict[str, float]:
    """Best wall seconds of a fresh interpreter: bare, and importing what ``kdseg segment`` needs."""
    def fresh(code: str) -> float:
        return best_of(lambda: subprocess.run([sys.executable, "-c", code], check=True), repeats)

    return {"bare interpreter": fresh("pass"),
            "import numpy, SimpleITK, onnxruntime": fresh("import numpy, SimpleITK, onnxruntime")}


def decode_floor(ct: Path, repeats: int) -> Tuple[float, Dict[str, float]]:
    """Best seconds to read the file's bytes (page cache), and to gunzip them with each inflate installed."""
    data = ct.read_bytes()
    decoders: Dict[str, Callable[[], object]] = {"zlib": lambda: zlib.decompress(data, 31)}
    try:
        from isal import isal_zlib
        decoders["isal (ISA-L)"] = lambda: isal_zlib.decompress(data, 31)
    except ImportError:
        pass
    times = {name: best_of(decode, repeats) for name, decode in decoders.items()}
    return best_of(ct.read_bytes, repeats), times


def memory_pass(volume: np.ndarray, repeats: int) -> Tuple[float, float]:
    """Best seconds of one copy of ``volume`` into a preallocated array, and the GB/s moved (read + write)."""
    target = np.empty_like(volume)
    seconds = best_of(lambda: np.copyto(target, volume), repeats)
    return seconds, 2 * volume.nbytes / seconds / 1e9


def write_floor(labels: sitk.Image, tmp: Path, repeats: int) -> float:
    """Best seconds of ITK's compressed .nii.gz write of the label map (kdseg's writer, no read-back check)."""
    target = tmp / "labels-floor.nii.gz"
    return best_of(lambda: sitk.WriteImage(labels, str(target), useCompression=True), repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, help="a 512x512xN .nii.gz (default: built like segment_volume.py)")
    parser.add_argument("--slices", type=int, default=150, help="slices of the CT built when --ct is not given")
    parser.add_argument("--registry", type=Path, help="registry JSON (default: the bundled one)")
    parser.add_argument("--model", help="model id (default: the registry's default)")
    parser.add_argument("--onnx", type=Path, help="profile this ONNX file (same input as the card's) instead")
    parser.add_argument("--batch", type=int, default=8, help="batch of the per-layer tables (kdseg's default 8)")
    parser.add_argument("--batches", default="4,8,16,32", help="batch sizes of the rate/bound sweep ('' skips)")
    parser.add_argument("--threads", type=int, help="kdseg --threads (default: kdseg's, one per usable core); "
                        "also the threads of the profiled single call and of the peak")
    parser.add_argument("--thread-spinning", choices=("auto", "on", "off"), default="auto",
                        help="kdseg --thread-spinning for the network as kdseg runs it (default: kdseg's, auto)")
    parser.add_argument("--option-batches", default="8,16",
                        help="batch sizes of the session-options comparison ('' skips it)")
    parser.add_argument("--runs", type=int, default=12, help="runs per profiling session (kernels: best), and "
                        "timed streams of the network per batch")
    parser.add_argument("--option-repeats", type=int, default=6, help="timed streams per session-option variant")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each floor measurement (best)")
    parser.add_argument("--skip-kdseg", action="store_true", help="no kdseg segment run (write floor on a "
                        "label map made by thresholding the CT instead)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    registry = load_registry(args.registry)
    card = registry.get(args.model)
    onnx_path = args.onnx or registry.directory / card.file
    img_size = card.input.height
    threads = args.threads or usable_cores()  # the profiled single call's and the peak's
    kdseg_threads, threads_warning = bounded_threads(args.threads)  # as `kdseg segment --threads` lowers them
    if threads_warning:
        print(f"kdseg: {threads_warning}")
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    with tempfile.TemporaryDirectory(prefix="kdseg_limits_") as tmp_name:
        tmp = Path(tmp_name)
        if args.onnx:  # kdseg's engine on the other graph: a one-entry registry with the card's input and labels
            network = kdseg_network(registry_for_onnx(args.onnx, card, tmp, "profiled"), "profiled", kdseg_threads,
                                    args.thread_spinning)
        else:
            network = kdseg_network(registry, card.id, kdseg_threads, args.thread_spinning)
        print(f"model: {card.id} v{card.version} ({card.architecture}, {img_size}x{card.input.width}), "
              f"{onnx_path.name}; {os.cpu_count()} CPUs, {usable_cores()} usable; load average "
              f"{os.getloadavg()[0]:.2f}")
        print(f"network as kdseg runs it (run_layout({kdseg_threads or 'None: one thread per usable core'}), "
              f"--thread-spinning {args.thread_spinning}): "
              f"{network.describe()} ({network.spinning_reason}); per-kernel profile: one call on {threads} threads")
        figures: Dict[str, object] = {
            "model": card.id, "threads": threads, "cpus": os.cpu_count(),
            "kdseg_layout": {"concurrent_calls": network.workers, "session_threads": network.layout.session_threads,
                             "spinning": network.spinning, "spinning_reason": network.spinning_reason},
            "profiled_call": {"threads": threads, "spinning": True}}
        ct = args.ct
        if ct is None:
            ct = tmp / "ct.nii.gz"
            sitk.WriteImage(resampled_ct(512, args.slices), str(ct), useCompression=True)
        peaks = [mlas_peak_gflops(threads)]
        limits = network_limits(onnx_path, args.batch, img_size, threads, network, args.runs, tmp)
        sweep = {}
        for batch in batches:
            if batch != args.batch:
                sweep[batch] = network_limits(onnx_path, batch, img_size, threads, network, args.runs, tmp)
        sweep[args.batch] = limits
        option_batches = [int(b) for b in args.option_batches.split(",") if b.strip()]
        options = options_sweep(onnx_path, img_size, network, threads, option_batches, args.option_repeats) \
            if option_batches else None

        startup = startup_floor(args.repeats)
        file_read_s, decode = decode_floor(ct, args.repeats)
        volume = sitk.GetArrayFromImage(sitk.ReadImage(str(ct)))
        slices = volume.shape[0]
        copy_s, copy_gbs = memory_pass(volume, 2 * args.repeats)
        input_mb, file_mb = volume.nbytes / 1e6, ct.stat().st_size / 1e6
        del volume
        kdseg_run = None
        if args.skip_kdseg:
            image = sitk.ReadImage(str(ct))
            labels = sitk.Cast(sitk.BinaryThreshold(image, 100, 400, 1, 0), sitk.sitkUInt8)
        else:
            kdseg_run = run_kdseg(ct, tmp / "labels.nii.gz", args.registry, args.model, args.batch, args.threads,
                                  spinning=args.thread_spinning)
            labels = sitk.ReadImage(str(tmp / "labels.nii.gz"))
        write_s = write_floor(labels, tmp, args.repeats)
        peaks.append(mlas_peak_gflops(threads))

    peak = max(peaks)
    print(f"\nMLAS fp32 peak (2048^3 MatMul, {threads} threads, before/after): {peak:.0f} GFLOP/s "
          f"({' / '.join(f'{p:.0f}' for p in peaks)})")
    figures["mlas_peak_gflops"] = peak
    figures["network"] = print_network(limits, peak, network, threads)
    print("\n  batch sweep (un-profiled network rate as kdseg runs it and as one call; one call's bounds as above), "
          "share of the MLAS peak:")
    print(f"    {'batch':>6}{'ms/slice':>10}{'kdseg':>8}{'one call':>10}{'bound: rest free':>18}"
          f"{'bound: rest as measured':>25}")
    figures["batch_sweep"] = {}
    for batch in sorted(sweep):
        lim = sweep[batch]
        rate = lim["flops"] / lim["profile"]["run_s"] / 1e9
        one_call = lim["flops"] / lim["profile"]["one_call_run_s"] / 1e9
        free = lim["flops"] / lim["gemm_alone_s"] / 1e9
        other = lim["flops"] / (lim["gemm_alone_s"] + lim["other_kernels_s"]) / 1e9
        figures["batch_sweep"][batch] = {"ms_per_slice": 1e3 * lim["profile"]["run_s"] / batch,
                                         "share_of_peak": rate / peak, "one_call_share_of_peak": one_call / peak,
                                         "bound_gemm_only": free / peak,
                                         "bound_with_other_kernels": other / peak}
        print(f"    {batch:>6}{1e3 * lim['profile']['run_s'] / batch:>10.3f}{100 * rate / peak:>7.0f}%"
              f"{100 * one_call / peak:>9.0f}%{100 * free / peak:>17.0f}%{100 * other / peak:>24.0f}%")

    if options is not None:
        figures["session_options_speedup"] = print_options(options, network)

    network_s = limits["profile"]["run_s"] / args.batch * slices
    decoder, decode_s = min(decode.items(), key=lambda item: item[1])
    floor = {"start-up + imports (fresh process)": startup["import numpy, SimpleITK, onnxruntime"],
             f"read the file's {file_mb:.0f} MB (page cache)": file_read_s,
             f"gzip decode ({decoder})": decode_s,
             f"one memory pass over the input ({input_mb:.0f} MB copy)": copy_s,
             "write the uint8 label map (.nii.gz, ITK)": write_s}
    floor_s = sum(floor.values())
    cores = usable_cores()
    sequential = floor_s / (floor_s + network_s)
    overlapped = (floor_s / cores) / (floor_s / cores + network_s)
    print(f"\n(2) Floor of the not-network work, {slices}-slice CT {ct.name} (best of {args.repeats}):")
    print(f"    bare interpreter start-up {startup['bare interpreter']:.3f} s; decoders: "
          + ", ".join(f"{name} {s:.3f} s" for name, s in decode.items())
          + f"; memory copy {copy_gbs:.1f} GB/s")
    for name, seconds in floor.items():
        print(f"    {name:<58}{seconds:7.3f} s")
    print(f"    {'sum':<58}{floor_s:7.3f} s")
    print(f"  network for the same {slices} slices as kdseg runs it (batch {args.batch}, {network.describe()}): "
          f"{network_s:.3f} s")
    print(f"  not-network share of the wall at the floor: {100 * sequential:.1f}% one after the other, "
          f"{100 * overlapped:.1f}% with perfect overlap on {cores} cores (target <= 20%)")
    print(f"  for 20%: the not-network work must fit in {0.25 * network_s:.3f} s sequential, "
          f"{0.25 * network_s * cores:.3f} CPU-s spread over {cores} cores")
    figures["floor_s"] = floor
    figures["floor"] = {"sum_s": floor_s, "network_s": network_s, "share_sequential": sequential,
                        "share_perfect_overlap": overlapped, "cores": cores, "startup_s": startup,
                        "decode_s": decode, "memory_copy_gb_per_s": copy_gbs}
    if kdseg_run is not None:
        wall, infer = kdseg_run["wall_to_file_s"], kdseg_run["stages_s"]["infer"]
        stages = ", ".join(f"{name} {s:.2f}" for name, s in kdseg_run["stages_s"].items())
        print(f"  kdseg segment, same CT, this run: wall to file {wall:.2f} s ({stages}); not network "
              f"{wall - infer:.2f} s = {100 * (wall - infer) / wall:.1f}% of the wall; "
              f"{(wall - infer) / floor_s:.1f}x the floor")
        figures["kdseg"] = {"wall_s": wall, "stages_s": kdseg_run["stages_s"],
                            "non_network_share": (wall - infer) / wall}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
