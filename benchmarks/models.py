"""CPU latency of teacher vs students per 224x224 slice, PyTorch and ONNX Runtime, measured in one run.

    python benchmarks/models.py [--repeats 5] [--models teacher-r50-b16 student-shsa student-mhsa]

Prints parameters, MACs, latency per slice at batch 1 and 16, the teacher/student
ratios from this run, and achieved GFLOP/s next to this machine's measured fp32
matmul peak. Asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from kdseg_train.export import export_onnx
from kdseg_train.models import create_model
from kdseg_train.models.cost import count_macs, count_parameters


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def per_slice_seconds(run, batch: int, repeats: int) -> float:
    run(batch)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["teacher-r50-b16", "student-shsa", "student-mhsa"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, threads {torch.get_num_threads()}")
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048^2 torch.matmul): {peak:.1f} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = create_model(name, img_size=224).eval()
            macs = count_macs(model, 224)
            onnx_path = export_onnx(model, Path(tmp) / f"{name}.onnx", 224, check=False)
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            row = {"name": name, "params": count_parameters(model), "gmacs": macs / 1e9}
            for batch in args.batches:
                x = torch.rand(batch, 1, 224, 224)

                def run_torch(b, x=x):
                    with torch.inference_mode():
                        model(x[:b])

                def run_ort(b, x=x.numpy()):
                    session.run(["logits"], {"image": x[:b]})

                row[f"torch_b{batch}"] = per_slice_seconds(run_torch, batch, args.repeats)
                row[f"ort_b{batch}"] = per_slice_seconds(run_ort, batch, args.repeats)
            rows.append(row)
            print(f"measured {name}", flush=True)
    teacher = rows[0]
    header = f"{'model':<18}{'params (M)':>11}{'GMACs':>8}" + "".join(
        f"{f'{rt} b{b} ms':>14}" for b in args.batches for rt in ("torch", "ort"))
    print(header)
    for row in rows:
        print(f"{row['name']:<18}{row['params'] / 1e6:>11.2f}{row['gmacs']:>8.2f}" + "".join(
            f"{row[f'{rt}_b{b}'] * 1e3:>14.1f}" for b in args.batches for rt in ("torch", "ort")))
    print("\nratios in this run (teacher time / model time) and achieved GFLOP/s (2 x MACs / time):")
    for row in rows[1:]:
        for b in args.batches:
            for rt in ("torch", "ort"):
                key = f"{rt}_b{b}"
                gflops = 2 * row["gmacs"] / row[key]
                print(f"  {row['name']:<16} {rt:<5} batch {b:<3} speed-up {teacher[key] / row[key]:6.2f}x   "
                      f"{gflops:6.1f} GFLOP/s ({100 * gflops / peak:4.1f}% of peak; teacher "
                      f"{2 * teacher['gmacs'] / teacher[key]:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
