"""`kdseg segment` on a 512 x 512 x 150 CT, end to end: stages, slices/s, peak RSS, network share of the machine's peak.

    python benchmarks/segment_volume.py [--registry REG] [--model ID] [--onnx FILE]
                                        [--slices 150] [--batch-size N] [--threads N]
                                        [--no-teacher] [--baseline-src DIR] [--repeats N] [--json FILE]
                                        [--busy 2] [--policy-repeats 2] [--no-policy] [--no-sweep]

The CT is the real example CT (../shared/data) resampled to 512 x 512 x N (int16 HU,
.nii.gz), the size of a typical abdominal CT. The segmentation runs as a separate
``kdseg segment`` process, exactly as a user runs it: its wall time is measured from
process start to the output file's modification time (the atomic rename happens after
the last byte is written), and its peak RSS is that child's own ``ru_maxrss``. Stage
times come from the child's ``--volumes-json``; whatever the stages do not cover is
Python start-up, imports and the command's argument/registry checks. When kdseg overlaps
the network calls with pre- and post-processing (``network_overlapped`` in its JSON), its
stage times still partition the wall time: "infer" is the wall time during which a
network call ran, every other stage counts only its time while none ran, so "not network
inference" is the wall time when no network call was running; each stage's own working
time (``stage_busy_s``, overlapping) is printed next to it.

In the same run, the script measures this machine's fp32 peak twice over, before and
after the segmentation, with the same thread count: ONNX Runtime's own MLAS kernel (a
2048 x 2048 MatMul ONNX graph built here) and ``torch.matmul``. The network's achieved
GFLOP/s is 2 x MACs (``torch.utils.flop_counter`` on the card's architecture at the
card's input size) x slices / inference time, over the network's wall time in the run
(shared with the overlapped stages) and alone in this process with the cores to itself. The same CT then goes through the
teacher (TransUNet R50-ViT-B/16, exported here **untrained**: its labels are
meaningless, its timing is what a trained teacher costs) with the same card.
Because wall time on a shared machine stretches with the load, the same split is also
given in CPU seconds: the child's user + system time (all threads) against the CPU time
ONNX Runtime alone spends on the same number of slices in this process.

Thread spinning (``kdseg segment --thread-spinning off|on|auto``): in two machine states,
as found (idle, when nothing else runs) and with ``--busy`` CPU-bound processes started
by the script, each policy runs as its own ``kdseg`` process (interleaved repeats), next
to ONNX Runtime sessions with sleeping threads, threads spinning during a run only, and
threads that keep spinning between runs (ONNX Runtime's default), on batches of 8 slices.
Each state prints the load ``auto`` measures and the choice it made.

``--baseline-src DIR`` also runs ``kdseg`` from another source tree (for example a
``git worktree`` of an older commit) on the same CT, for a before/after comparison.
Figures are ratios measured side by side in one run; on a shared machine the absolute
numbers move with the load. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.errors import KDSegError
from KDSegmentationLib.weights.model_registry import ModelCard, load_registry, write_registry

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "totalsegmentator_example" / "example_ct.nii.gz"
PEAK_MATMUL_SIZE = 2048


def resampled_ct(size_xy: int, slices: int) -> sitk.Image:
    """The real example CT resampled (linear) to size_xy x size_xy x slices, int16 HU, same extent."""
    image = sitk.ReadImage(str(DATA))
    size = (size_xy, size_xy, slices)
    spacing = [image.GetSpacing()[i] * image.GetSize()[i] / size[i] for i in range(3)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), -1024, sitk.sitkInt16)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def registry_for_onnx(onnx: Path, like: ModelCard, directory: Path, name: str) -> Path:
    """A one-entry registry bundling ``onnx`` with ``like``'s input spec and labels (a benchmark entry)."""
    target = directory / f"{name}.onnx"
    shutil.copyfile(onnx, target)
    card = dataclasses.replace(like, id=name, title=f"benchmark: {onnx.name}", file=target.name,
                               size_bytes=target.stat().st_size, sha256=sha256_of(target), urls=(target.name,),
                               intended_use="benchmark only")
    return write_registry(directory / f"{name}.json", [card], name)


def mlas_peak_gflops(threads: Optional[int], n: int = PEAK_MATMUL_SIZE, seconds: float = 1.5) -> float:
    """Best GFLOP/s of ONNX Runtime (MLAS) on an n x n x n fp32 MatMul graph built here."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["c"])], "peak",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    return _best_gflops(lambda: session.run(None, {"a": a}), 2 * n ** 3, seconds)


def torch_peak_gflops(threads: Optional[int], n: int = PEAK_MATMUL_SIZE, seconds: float = 1.5) -> float:
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return _best_gflops(lambda: a @ b, 2 * n ** 3, seconds)


def _best_gflops(run, flops: float, seconds: float) -> float:
    run()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


def macs_per_slice(architecture: str, img_size: int) -> Optional[float]:
    """MACs of one slice through the card's architecture (torch flop counter), None if unknown."""
    try:
        from kdseg_train.models import create_model
        from kdseg_train.models.cost import count_macs
        return float(count_macs(create_model(architecture, img_size=img_size).eval(), img_size))
    except (ImportError, KeyError, ValueError):
        return None


def session_variants(onnx: Path, threads: Optional[int]) -> Dict[str, object]:
    """The same model under ONNX Runtime session variants (thread spinning, graph optimisation level).

    Variants: the pipeline's sleeping threads (``_session_options``, ORT_ENABLE_ALL), threads
    spinning during a run only (what ``--thread-spinning on``/auto on a free machine use),
    threads that keep spinning after a run (ONNX Runtime's own default), and
    ORT_ENABLE_EXTENDED (no NCHWc layout transformer, so no Reorder nodes around GroupNorm).
    """
    import onnxruntime as ort
    from KDSegmentationLib.inference.onnx_engine import _session_options

    ort.set_default_logger_severity(3)  # overwriting a config entry below logs a warning

    def variant(spinning: bool = False, keep_spinning: bool = False, level=None):
        options = _session_options(threads, spinning=spinning)
        if keep_spinning:
            options.add_session_config_entry("session.force_spinning_stop", "0")
        if level is not None:
            options.graph_optimization_level = level
        return ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])

    return {"sleeping threads (off)": variant(),
            "spinning during a run (on)": variant(spinning=True),
            "spinning, also between runs": variant(spinning=True, keep_spinning=True),
            "ORT_ENABLE_EXTENDED, sleeping": variant(level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)}


def session_sweep(onnx: Path, img_size: int, threads: Optional[int], batches=(1, 4, 8, 16), repeats: int = 3
                  ) -> Dict[str, Dict[int, float]]:
    """Median ms per slice of each :func:`session_variants` session per batch size, repeats interleaved."""
    sessions = session_variants(onnx, threads)
    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, 1, img_size, img_size), dtype=np.float32) for b in batches}
    times: Dict[str, Dict[int, list]] = {name: {b: [] for b in batches} for name in sessions}
    for name, session in sessions.items():
        for b in batches:
            session.run(None, {"image": inputs[b]})
    for _ in range(repeats):
        for b in batches:
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {"image": inputs[b]})
                times[name][b].append((time.perf_counter() - start) / b)
    return {name: {b: 1e3 * float(np.median(v)) for b, v in per.items()} for name, per in times.items()}


class BusyProcesses:
    """``count`` CPU-bound processes (a pure-Python loop each) while the ``with`` block runs."""

    def __init__(self, count: int) -> None:
        self.count, self._children = count, []

    def __enter__(self) -> "BusyProcesses":
        self._children = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)]
        time.sleep(1.0)  # let them reach the scheduler's steady state
        return self

    def __exit__(self, *exc) -> None:
        for child in self._children:
            child.kill()
        for child in self._children:
            child.wait()


def machine_state() -> Dict[str, object]:
    """The load as kdseg's "auto" policy measures it, and the 1-minute load average."""
    from KDSegmentationLib.inference.thread_spinning import measure_other_load

    reading = measure_other_load(0.5)
    return {"busy_cores_other": None if reading is None else reading.busy_cores,
            "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def thread_policy_comparison(source: Path, directory: Path, registry: Optional[Path], model_id: Optional[str],
                             onnx: Path, img_size: int, batch_size: Optional[int], threads: Optional[int],
                             busy: int, repeats: int) -> Dict[str, object]:
    """``kdseg segment --thread-spinning off|on|auto`` and the session variants, on an idle and a busy machine.

    In each machine state (as found, then with ``busy`` CPU-bound processes started here)
    the three policies run as separate ``kdseg`` processes, interleaved ``repeats`` times,
    and the session variants time batches of 8 slices, interleaved too.
    """
    states: Dict[str, object] = {}
    batch = np.random.default_rng(0).random((8, 1, img_size, img_size), dtype=np.float32)
    for state, count in (("as found", 0), (f"{busy} CPU-bound processes", busy)):
        with BusyProcesses(count):
            before = machine_state()
            runs: Dict[str, list] = {policy: [] for policy in ("off", "on", "auto")}
            for _ in range(repeats):
                for policy in runs:
                    runs[policy].append(run_kdseg(source, directory / f"policy-{policy}.nii.gz", registry, model_id,
                                                  batch_size, threads, spinning=policy))
            sessions = session_variants(onnx, threads)
            per_slice: Dict[str, list] = {name: [] for name in sessions}
            for session in sessions.values():
                session.run(None, {"image": batch})
            for _ in range(max(repeats, 3)):
                for name, session in sessions.items():
                    start = time.perf_counter()
                    session.run(None, {"image": batch})
                    per_slice[name].append((time.perf_counter() - start) / len(batch))
            after = machine_state()
        states[state] = {
            "load_before": before, "load_after": after,
            "kdseg": {policy: {"wall_to_file_s": float(np.median([r["wall_to_file_s"] for r in rs])),
                               "wall_runs_s": [r["wall_to_file_s"] for r in rs],
                               "infer_runs_s": [r["stages_s"]["infer"] for r in rs],
                               "infer_s": float(np.median([r["stages_s"]["infer"] for r in rs])),
                               "cpu_s": float(np.median([r["cpu_s"] for r in rs])),
                               "auto_chose": sorted({str(r["thread_spinning"].get("spinning")) for r in rs}),
                               "reason": rs[-1]["thread_spinning"].get("reason")} for policy, rs in runs.items()},
            "batch8_ms_per_slice": {name: 1e3 * float(np.median(v)) for name, v in per_slice.items()},
            "batch8_ms_per_slice_runs": {name: [1e3 * t for t in v] for name, v in per_slice.items()}}
    return states


def print_thread_policy(states: Dict[str, object], img_size: int) -> None:
    print("\nThread spinning policy, side by side (kdseg processes and batch-8 sessions interleaved per state):")
    for state, figures in states.items():
        before, after = figures["load_before"], figures["load_after"]
        print(f"  machine {state}: other processes' busy cores {before['busy_cores_other']:.2f} before / "
              f"{after['busy_cores_other']:.2f} after, 1-min load average {before['loadavg_1min']:.2f} / "
              f"{after['loadavg_1min']:.2f}")
        print(f"    {'kdseg --thread-spinning':<30}{'wall to file (min-max)':>24}{'infer (min-max)':>20}"
              f"{'CPU s':>8}  spinning")
        for policy, run in figures["kdseg"].items():
            walls, infers = run["wall_runs_s"], run["infer_runs_s"]
            print(f"    {policy:<30}{run['wall_to_file_s']:>9.2f} s ({min(walls):.2f}-{max(walls):.2f})"
                  f"{run['infer_s']:>7.2f} s ({min(infers):.2f}-{max(infers):.2f}){run['cpu_s']:>8.2f}  "
                  f"{'/'.join(run['auto_chose'])}")
        print(f"      (auto: {figures['kdseg']['auto']['reason']})")
        print(f"    {'session variant':<30}ms per {img_size}x{img_size} slice, batch 8: median (min-max)")
        for name, ms in figures["batch8_ms_per_slice"].items():
            runs = figures["batch8_ms_per_slice_runs"][name]
            print(f"    {name:<30}{ms:>8.2f} ({min(runs):.2f}-{max(runs):.2f})")


def network_alone_seconds(onnx: Path, img_size: int, slices: int, batch_size: int, threads: Optional[int],
                          concurrent_runs: int = 1) -> Tuple[float, float]:
    """CPU seconds (all threads) and wall seconds ONNX Runtime alone spends on ``slices`` slices, batched as kdseg.

    CPU time is what a loaded machine distorts least: wall time stretches with other
    processes, the work a process does hardly changes. The wall time is the network's own
    rate with the cores to itself (in kdseg, overlapped stages share them).

    Args:
        threads: intra-op threads of the session the calls share (None: ONNX Runtime's default).
        concurrent_runs: calls in progress at once (kdseg's layout: ``run_layout``).
    """
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort
    from KDSegmentationLib.inference.onnx_engine import _session_options

    session = ort.InferenceSession(str(onnx), _session_options(threads), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).random((batch_size, 1, img_size, img_size), dtype=np.float32)
    session.run(None, {"image": batch})
    with ThreadPoolExecutor(concurrent_runs) as pool:
        start, wall = time.process_time(), time.perf_counter()
        list(pool.map(lambda first: session.run(None, {"image": batch[: min(batch_size, slices - first)]}),
                      range(0, slices, batch_size)))
        return time.process_time() - start, time.perf_counter() - wall


def export_untrained_teacher(img_size: int, directory: Path) -> Path:
    from kdseg_train.export import export_onnx
    from kdseg_train.models import create_model

    return export_onnx(create_model("teacher-r50-b16", img_size=img_size).eval(), directory / "teacher-export.onnx",
                       img_size, check=False)


def run_kdseg(source: Path, output: Path, registry: Optional[Path], model: Optional[str], batch_size: Optional[int],
              threads: Optional[int], source_tree: Optional[Path] = None, spinning: Optional[str] = None
              ) -> Dict[str, object]:
    """One ``kdseg segment`` process: stage times, wall time to the written file, peak RSS.

    Args:
        source_tree: run the ``KDSegmentationLib`` of this repository checkout instead of this one's.
        spinning: ``--thread-spinning`` (None: kdseg's default; older trees lack the option).
    """
    volumes_json = output.with_suffix(".json")
    command = [sys.executable, "-m", "KDSegmentationLib.cli"]
    if registry is not None:
        command += ["--registry", str(registry)]
    command += ["segment", str(source), "-o", str(output), "--device", "cpu", "--volumes-json", str(volumes_json),
                "--no-progress"]
    if model:
        command += ["--model", model]
    if batch_size:
        command += ["--batch-size", str(batch_size)]
    if threads:
        command += ["--threads", str(threads)]
    if spinning:
        command += ["--thread-spinning", spinning]
    log = output.with_suffix(".log")
    with open(log, "w", encoding="utf-8") as handle:
        started = time.time()
        env = None
        if source_tree is not None:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(source_tree / "KDSegmentation"), str(source_tree / "Training")]))
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (Linux, macOS)
        exited = time.time()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"kdseg failed (exit {code}): {log.read_text(encoding='utf-8').strip()}")
    written = json.loads(volumes_json.read_text(encoding="utf-8"))
    timings = written["timings_s"]
    to_file = output.stat().st_mtime - started
    stages = {"start-up, imports, checks": max(to_file - sum(timings.values()), 0.0), **timings}
    return {"stages_s": stages, "wall_to_file_s": to_file, "process_s": exited - started,
            "stage_busy_s": written.get("stage_busy_s") or {},  # older trees: stages never overlapped
            "network_overlapped": bool(written.get("network_overlapped")),
            "thread_spinning": written.get("thread_spinning") or {},
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)}


def median_run(runs: List[Dict[str, object]]) -> Dict[str, object]:
    """The run with the median wall time to file (the lower middle one of an even count), with every run's wall."""
    ordered = sorted(runs, key=lambda run: run["wall_to_file_s"])
    return dict(ordered[(len(ordered) - 1) // 2], wall_runs_s=[run["wall_to_file_s"] for run in runs])


def report(name: str, run: Dict[str, object], slices: int, macs: Optional[float], peak: float,
           network_alone: Optional[Tuple[float, float]] = None) -> Dict[str, object]:
    stages = run["stages_s"]
    wall = run["wall_to_file_s"]
    infer = stages["infer"]
    busy = run.get("stage_busy_s") or {}
    overlapped = run.get("network_overlapped", False)
    print(f"\n{name}: stage times (s), from process start to the output file written; network "
          f"{'overlapped with pre-/post-processing' if overlapped else 'one step after another'}")
    print(f"  {'stage':<27} {'wall':>7}  {'share':>5}   {'busy':>5}")
    for stage, seconds in stages.items():
        worked = f"{busy[stage]:7.2f}" if stage in busy else ""
        print(f"  {stage:<27} {seconds:7.2f}  {100 * seconds / wall:5.1f}% {worked}")
    walls = run.get("wall_runs_s") or [wall]
    spread = f"; median of {len(walls)} runs, {min(walls):.2f}-{max(walls):.2f}" if len(walls) > 1 else ""
    print(f"  {'wall to file written':<27} {wall:7.2f}  (process exit {run['process_s']:.2f}{spread})")
    if overlapped:
        print("  (wall: infer = wall time during which a network call ran; each other stage only while none ran, "
              "so the column sums to the wall; busy: each stage's own working time, overlapping)")
    share = (wall - infer) / wall
    summary = dict(run, slices_per_s=slices / wall, infer_slices_per_s=slices / infer, non_network_share=share)
    print(f"  throughput {slices / wall:.1f} slices/s end to end, {slices / infer:.1f} slices/s in ONNX Runtime; "
          f"peak RSS {run['peak_rss_mb']:.0f} MB")
    print(f"  not network inference (wall time when no network call ran): {wall - infer:.2f} s = {100 * share:.1f}% "
          f"of the wall time (target <= 20%)")
    network_cpu = None if network_alone is None else network_alone[0]
    if network_cpu is not None:
        cpu_share = max(run["cpu_s"] - network_cpu, 0.0) / run["cpu_s"]
        summary["non_network_cpu_share"] = cpu_share
        print(f"  CPU time: {run['cpu_s']:.2f} s for the whole process (all threads); the network alone on the same "
              f"slices {network_cpu:.2f} s -> not network: {100 * cpu_share:.1f}% of the CPU time")
    if macs:
        achieved = 2 * macs * slices / infer / 1e9
        summary.update(gmacs_per_slice=macs / 1e9, achieved_gflops=achieved, share_of_mlas_peak=achieved / peak)
        print(f"  network: {macs / 1e9:.2f} GMAC/slice, {achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of "
              f"the MLAS fp32 peak (target >= 85%) over its wall time in this run")
        if network_alone is not None:
            alone = 2 * macs * slices / network_alone[1] / 1e9
            summary.update(network_alone_s=network_alone[1], alone_share_of_mlas_peak=alone / peak)
            print(f"  network alone with the cores to itself (this process, same slices): {network_alone[1]:.2f} s, "
                  f"{alone:.1f} GFLOP/s = {100 * alone / peak:.0f}% of the peak"
                  + (" (in the run it shares them with the overlapped stages)" if run.get("network_overlapped")
                     else ""))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, help="registry JSON (default: the bundled one)")
    parser.add_argument("--model", help="model id in the registry (default: its default model)")
    parser.add_argument("--onnx", type=Path, help="time this ONNX file with the model's card instead")
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--batch-size", type=int, help="kdseg --batch-size (default: kdseg's)")
    parser.add_argument("--threads", type=int, help="kdseg --threads and the peak measurement (default: ORT's)")
    parser.add_argument("--no-teacher", action="store_true", help="skip the teacher comparison")
    parser.add_argument("--no-sweep", action="store_true", help="skip the session options / batch size sweep")
    parser.add_argument("--busy", type=int, default=2,
                        help="CPU-bound processes started for the busy-machine half of the thread-spinning comparison")
    parser.add_argument("--policy-repeats", type=int, default=2,
                        help="interleaved repeats of each --thread-spinning policy per machine state")
    parser.add_argument("--no-policy", action="store_true", help="skip the thread-spinning comparison")
    parser.add_argument("--baseline-src", type=Path, help="also run kdseg from this source tree (before/after)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="kdseg runs of this tree (and the baseline's, interleaved); the median run is reported")
    parser.add_argument("--peak-size", type=int, default=PEAK_MATMUL_SIZE, help="n of the n^3 peak MatMul")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.repeats < 1:  # the median of no run does not exist
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    try:
        registry = load_registry(args.registry)
        card = registry.get(args.model)
    except KDSegError as exc:
        print(f"No model to benchmark: {exc}\nPass --registry/--model, or train and export one.")
        return 1
    img_size = card.input.height
    with tempfile.TemporaryDirectory(prefix="kdseg_bench_") as tmp:
        tmp_dir = Path(tmp)
        registry_path, model_id = args.registry, args.model
        if args.onnx:
            registry_path, model_id = registry_for_onnx(args.onnx, card, tmp_dir, "benchmark"), None
        ct = resampled_ct(512, args.slices)
        source = tmp_dir / "ct.nii.gz"
        sitk.WriteImage(ct, str(source), useCompression=True)
        print(f"input: {ct.GetSize()} int16 ({ct.GetNumberOfPixels() * 2 / 1e6:.0f} MB in memory, "
              f"{source.stat().st_size / 1e6:.0f} MB .nii.gz), resampled from {DATA.name}")
        print(f"model: {card.id} v{card.version} ({card.architecture}, {img_size}x{card.input.width}, "
              f"{card.num_classes} classes); threads {args.threads or 'default'}, {os.cpu_count()} CPUs")
        del ct
        peaks = {"mlas": [mlas_peak_gflops(args.threads, args.peak_size)],
                 "torch": [torch_peak_gflops(args.threads, args.peak_size)]}
        students, baselines = [], []
        for _ in range(args.repeats):  # interleaved, so that a change of load hits both trees alike
            students.append(run_kdseg(source, tmp_dir / "student.nii.gz", registry_path, model_id, args.batch_size,
                                      args.threads))
            if args.baseline_src:
                baselines.append(run_kdseg(source, tmp_dir / "baseline.nii.gz", registry_path, model_id,
                                           args.batch_size, args.threads, args.baseline_src.resolve()))
        student = median_run(students)
        baseline = median_run(baselines) if baselines else None
        if baseline is not None:
            same = np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_dir / "baseline.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_dir / "student.nii.gz"))))
            baseline["labels_identical"] = bool(same)
        teacher = None
        if not args.no_teacher:
            teacher_registry = registry_for_onnx(export_untrained_teacher(img_size, tmp_dir), card, tmp_dir, "teacher")
            teacher = run_kdseg(source, tmp_dir / "teacher.nii.gz", teacher_registry, None, args.batch_size,
                                args.threads)
        peaks["mlas"].append(mlas_peak_gflops(args.threads, args.peak_size))
        peaks["torch"].append(torch_peak_gflops(args.threads, args.peak_size))
        onnx_path = args.onnx or (load_registry(registry_path).directory / card.file)
        from KDSegmentationLib.inference.run_layout import run_layout

        layout = run_layout(args.threads)  # this tree's kdseg: concurrent calls sharing one session's threads
        network_alone = network_alone_seconds(onnx_path, img_size, args.slices, args.batch_size or 8,
                                              layout.session_threads, layout.concurrent_runs)
        # Older trees (the baseline) ran one call at a time on all threads.
        network_alone_one_call = network_alone_seconds(onnx_path, img_size, args.slices, args.batch_size or 8,
                                                       args.threads)
        sweep = None
        if not args.no_sweep:
            sweep = session_sweep(onnx_path, img_size, args.threads)
        policy = None
        if not args.no_policy:
            policy = thread_policy_comparison(source, tmp_dir, registry_path, model_id, onnx_path, img_size,
                                              args.batch_size, args.threads, args.busy, args.policy_repeats)

    peak = max(peaks["mlas"])
    print(f"\nfp32 peak ({args.peak_size}^3 MatMul, best before/after the runs): ONNX Runtime MLAS "
          f"{peak:.1f} GFLOP/s ({' / '.join(f'{p:.0f}' for p in peaks['mlas'])}), torch.matmul "
          f"{max(peaks['torch']):.1f} GFLOP/s ({' / '.join(f'{p:.0f}' for p in peaks['torch'])})")
    print(f"network alone (CPU split, rate with the cores to itself): {layout.concurrent_runs} call(s) at a time on "
          f"a session of {layout.session_threads} thread(s) as this tree's kdseg runs it; the baseline's: one call at a time on "
          f"{args.threads or 'all'} threads")
    figures = {"model": card.id, "slices": args.slices, "threads": args.threads, "cpus": os.cpu_count(),
               "mlas_peak_gflops": peak, "torch_peak_gflops": max(peaks["torch"]), "peaks_gflops": peaks,
               "student": report(f"student {card.id}", student, args.slices,
                                 macs_per_slice(card.architecture, img_size), peak, network_alone)}
    if baseline is not None:
        figures["baseline"] = report(f"baseline: the same model with kdseg from {args.baseline_src}", baseline,
                                     args.slices, macs_per_slice(card.architecture, img_size), peak,
                                     network_alone_one_call)
        figures["baseline_over_current_wall"] = baseline["wall_to_file_s"] / student["wall_to_file_s"]
        print(f"\nbaseline / current: wall to file {figures['baseline_over_current_wall']:.2f}x; label maps "
              f"{'identical' if baseline['labels_identical'] else 'DIFFER'}")
        if registry_path is None:
            print("  (each tree used its own bundled registry: if the bundled model changed in between, pass the "
                  "older tree's Resources/Models/registry.json with --registry to compare the same model)")
    if teacher is not None:
        figures["teacher"] = report("teacher teacher-r50-b16 (untrained export, same card)", teacher, args.slices,
                                    macs_per_slice("teacher-r50-b16", img_size), peak)
        ratio = teacher["stages_s"]["infer"] / student["stages_s"]["infer"]
        wall_ratio = teacher["wall_to_file_s"] / student["wall_to_file_s"]
        figures["teacher_over_student"] = {"infer": ratio, "wall": wall_ratio}
        print(f"\nteacher / student: inference {ratio:.1f}x, wall to file {wall_ratio:.1f}x (same run)")
    if sweep is not None:
        figures["session_sweep_ms_per_slice"] = sweep
        batches = list(next(iter(sweep.values())))
        print(f"\nONNX Runtime session variants, ms per {img_size}x{img_size} slice (median, interleaved repeats):")
        print(f"  {'variant':<28}" + "".join(f"{f'batch {b}':>10}" for b in batches))
        for name, per in sweep.items():
            print(f"  {name:<28}" + "".join(f"{per[b]:>10.2f}" for b in batches))
    if policy is not None:
        figures["thread_spinning"] = policy
        print_thread_policy(policy, img_size)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
