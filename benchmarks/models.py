"""CPU latency of the teacher vs each student per slice, PyTorch and ONNX Runtime, in one run.

    python benchmarks/models.py [--img-size 128] [--repeats 5] [--batches 1 8] [--threads 2]
                                [--models teacher-r50-b16 student-shsa-lite-bn ...] [--json out.json]

For every model: parameters, MACs (torch.utils.flop_counter / 2), median latency per slice
at each batch size in PyTorch (eval, inference_mode, the unfolded training module) and in
ONNX Runtime (CPU provider, the folded graph kdseg_train.export.export_onnx ships). The
repeats of all models are interleaved, so load from other processes on a shared machine
hits teacher and students alike; the teacher/student latency ratios printed are from
this one run. Achieved GFLOP/s (2 x MACs / time) is printed next to this machine's
measured fp32 matmul peak of the same runtime (torch.matmul for PyTorch, ONNX Runtime's MLAS MatMul
for ONNX Runtime). Untrained weights: latency does not depend on them.
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import onnxruntime as ort
import torch

from kdseg_train.export import export_onnx, onnx_parity
from kdseg_train.models import create_model
from kdseg_train.models.cost import MAC_CONVENTION, count_macs, count_parameters
from segment_volume import mlas_peak_gflops  # benchmarks/ is on sys.path when run as a script

IMG = 128  # the shipped input grid (TransUNet on Synapse uses 224: --img-size 224)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best-of-3 fp32 GFLOP/s of an n x n torch.matmul on the configured threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["teacher-r50-b16", "student-shsa-lite-bn", "student-shsa-lite", "student-shsa", "student-mhsa"],
                        help="the first one is the reference the ratios divide by")
    parser.add_argument("--img-size", type=int, default=IMG, help="square input size S")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model, runtime and batch")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads for both PyTorch and ONNX Runtime")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    img = args.img_size
    print(f"{cpu_name()}; torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads")
    # Each runtime against its own matmul kernel: torch's BLAS for PyTorch, MLAS for ONNX Runtime.
    peaks = {"torch": matmul_peak_gflops(), "ort": mlas_peak_gflops(args.threads)}
    print(f"fp32 matmul peak, 2048^3: torch.matmul {peaks['torch']:.1f} GFLOP/s, "
          f"ONNX Runtime (MLAS) MatMul {peaks['ort']:.1f} GFLOP/s")
    print(f"MACs: {MAC_CONVENTION}")

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    torch.manual_seed(0)
    inputs = {b: torch.rand(b, 1, img, img) for b in args.batches}
    rows: List[Dict[str, object]] = []
    runners: Dict[str, Callable[[int], None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = create_model(name, img_size=img)
            with torch.no_grad():  # BatchNorm statistics of real scale: the export parity check needs them
                model.train()(torch.rand(8, 1, img, img))
            model.eval()
            start = time.perf_counter()
            # Untrained weights give logits of arbitrary scale, so export's absolute 1e-3 parity
            # check can fail on rounding alone; the relative error and argmax agreement are printed.
            onnx_path = export_onnx(model, Path(tmp) / f"{name}.onnx", img, check=False)
            export_s = time.perf_counter() - start
            parity = onnx_parity(model, onnx_path, inputs[max(args.batches)])
            with torch.inference_mode():
                scale = float(model(inputs[max(args.batches)]).abs().max())
            if parity.max_abs_diff > 1e-4 * max(scale, 1.0) or parity.argmax_agreement < 0.999:
                raise SystemExit(f"{name}: ONNX Runtime disagrees with PyTorch (max |diff| {parity.max_abs_diff:.2e} "
                                 f"on logits up to {scale:.1f}, argmax agreement {parity.argmax_agreement:.4f})")
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            rows.append({"name": name, "params": count_parameters(model), "macs": count_macs(model, img),
                         "onnx_mb": onnx_path.stat().st_size / 1e6, "export_s": export_s})

            def run_torch(b: int, model=model) -> None:
                with torch.inference_mode():
                    model(inputs[b])

            def run_ort(b: int, session=session) -> None:
                session.run(["logits"], {"image": inputs[b].numpy()})

            runners[f"{name}/torch"], runners[f"{name}/ort"] = run_torch, run_ort
            print(f"built and exported {name} ({export_s:.1f} s; ONNX vs PyTorch max |diff| {parity.max_abs_diff:.1e} "
                  f"on logits up to {scale:.1f}, argmax agreement {parity.argmax_agreement:.4f})", flush=True)

        times: Dict[str, List[float]] = {}
        for batch in args.batches:
            for key, run in runners.items():  # warm-up (allocations, ORT arena, oneDNN kernels)
                run(batch)
            for _ in range(args.repeats):
                for key, run in runners.items():
                    start = time.perf_counter()
                    run(batch)
                    times.setdefault(f"{key}/b{batch}", []).append((time.perf_counter() - start) / batch)
            print(f"timed batch {batch}", flush=True)

    for row in rows:
        for batch in args.batches:
            for rt in ("torch", "ort"):
                row[f"{rt}_b{batch}_ms"] = 1e3 * float(np.median(times[f"{row['name']}/{rt}/b{batch}"]))
    ref = rows[0]
    print(f"\nmedian latency per {img}x{img} slice (ms) over {args.repeats} interleaved repeats")
    print(f"{'model':<18}{'params M':>10}{'GMACs':>8}{'ONNX MB':>9}" + "".join(
        f"{f'{rt} b{b}':>12}" for b in args.batches for rt in ("torch", "ort")))
    for row in rows:
        print(f"{row['name']:<18}{row['params'] / 1e6:>10.2f}{row['macs'] / 1e9:>8.2f}{row['onnx_mb']:>9.1f}" + "".join(
            f"{row[f'{rt}_b{b}_ms']:>12.1f}" for b in args.batches for rt in ("torch", "ort")))

    print(f"\n{ref['name']} / model latency ratio (same run), achieved GFLOP/s (share of that runtime's matmul peak):")
    for row in rows:
        for batch in args.batches:
            for rt in ("torch", "ort"):
                ms = row[f"{rt}_b{batch}_ms"]
                ratio = ref[f"{rt}_b{batch}_ms"] / ms
                gflops = 2 * row["macs"] / (ms / 1e3) / 1e9
                row[f"{rt}_b{batch}_ratio"] = ratio
                row[f"{rt}_b{batch}_gflops"] = gflops
                print(f"  {row['name']:<16} {rt:<5} batch {batch:<3} {ms:8.1f} ms  ratio {ratio:6.2f}x  "
                      f"{gflops:6.1f} GFLOP/s ({100 * gflops / peaks[rt]:4.1f}% of peak)")
    print(f"\nparams ratio {ref['name']} / model: " + ", ".join(
        f"{r['name']} {ref['params'] / r['params']:.1f}x" for r in rows[1:]))
    print(f"MACs ratio   {ref['name']} / model: " + ", ".join(
        f"{r['name']} {ref['macs'] / r['macs']:.1f}x" for r in rows[1:]))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "threads": args.threads, "matmul_peak_gflops": peaks,
                                         "img_size": img, "repeats": args.repeats, "models": rows}, indent=2),
                             encoding="utf-8")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
