"""End-to-end `kdseg segment` on a real CT resampled to 512 x 512 x N: time per stage, slices/s, peak RSS.

    python benchmarks/segment_volume.py [--registry REG] [--model ID] [--onnx FILE --img-size N]
                                        [--slices 150] [--batch-size 8] [--threads N]

The model is the registry's default (or --model), or any ONNX file given with --onnx
(for example an untrained export, to time the plumbing; its labels are meaningless).
Without a model it says so and stops. The segmentation runs as a separate `kdseg`
process, exactly as a user runs it, so its peak RSS (the child's ru_maxrss) is the
whole command's. A side-by-side figure compares the two ways of bringing one batch
of class maps back to 512 x 512 (numpy running maximum, used by the pipeline, vs a
SimpleITK vector-image resample + argmax). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KDSegmentationLib.errors import KDSegError
from KDSegmentationLib.weights.model_registry import InputSpec, ModelCard, labels_from_anatomy, load_registry, write_registry
from KDSegmentationLib.imaging.orientation import to_canonical
from KDSegmentationLib.inference.slice_resampling import argmax_resized, resize_slices

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "totalsegmentator_example" / "example_ct.nii.gz"


def resampled_ct(size_xy: int, slices: int) -> sitk.Image:
    """The real example CT resampled (linear) to size_xy x size_xy x slices, int16 HU, same extent."""
    image = sitk.ReadImage(str(DATA))
    size = (size_xy, size_xy, slices)
    spacing = [image.GetSpacing()[i] * image.GetSize()[i] / size[i] for i in range(3)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), -1024, sitk.sitkInt16)


def registry_for_onnx(onnx: Path, img_size: int, directory: Path) -> Path:
    """A one-entry registry bundling ``onnx`` (labelled as a benchmark model, not for use)."""
    data = onnx.read_bytes()
    (directory / "benchmark.onnx").write_bytes(data)
    card = ModelCard("benchmark", "benchmark model", "0", f"benchmark of {onnx.name}", "unknown", "benchmark.onnx",
                     len(data), hashlib.sha256(data).hexdigest(), ("benchmark.onnx",),
                     InputSpec(1, img_size, img_size, (-125.0, 275.0)), labels_from_anatomy(),
                     license="n/a", intended_use="benchmark only")
    return write_registry(directory / "registry.json", [card], "benchmark")


def _realistic_class_maps(classes: int, model_hw: int, batch: int) -> np.ndarray:
    """Scores shaped like a model's: one-hot organ maps of the real reference segmentation, smoothed."""
    seg_path = DATA.parent / "example_seg_fast_force_split.nii.gz"
    seg = sitk.GetArrayFromImage(to_canonical(sitk.ReadImage(str(seg_path))))[84:84 + batch]  # all 8 organs
    organ_ids = [52, 4, 3, 2, 5, 7, 1, 6][: classes - 1]  # TotalSegmentator ids in Synapse order
    maps = [~np.isin(seg, organ_ids)] + [seg == i for i in organ_ids]
    onehot = np.stack(maps, axis=1).astype(np.float32)
    return 8.0 * resize_slices(onehot, (model_hw, model_hw)) - 4.0


def class_maps_back_side_by_side(classes: int, model_hw: int, batch: int, repeats: int = 3) -> None:
    rng = np.random.default_rng(0)
    cases = {"organ-shaped scores": _realistic_class_maps(classes, model_hw, batch),
             "white-noise scores (worst case)": rng.normal(size=(batch, classes, model_hw, model_hw)).astype(np.float32)}
    for case, logits in cases.items():
        def pipeline_way():
            return argmax_resized(logits, (512, 512))

        def simpleitk_way():
            vectors = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(logits, 1, -1)), isVector=True)
            spacing = (model_hw / 512, model_hw / 512, 1.0)
            origin = (spacing[0] / 2 - 0.5, spacing[1] / 2 - 0.5, 0.0)
            out = sitk.Resample(vectors, (512, 512, batch), sitk.Transform(), sitk.sitkLinear, origin, spacing,
                                vectors.GetDirection(), 0.0, vectors.GetPixelID())
            return sitk.GetArrayFromImage(out).argmax(-1).astype(np.uint8)

        seconds, labels = [], []
        for fn in (pipeline_way, simpleitk_way):
            fn()
            start = time.perf_counter()
            for _ in range(repeats):
                result = fn()
            seconds.append((time.perf_counter() - start) / repeats)
            labels.append(result)
        agree = float((labels[0] == labels[1]).mean())
        print(f"class maps {batch}x{classes}x{model_hw}^2 -> {batch}x512^2 labels, {case}: pipeline "
              f"{seconds[0] * 1000:.0f} ms, SimpleITK vector resample + argmax {seconds[1] * 1000:.0f} ms "
              f"(ratio {seconds[1] / seconds[0]:.1f}x); labels agree on {agree:.4%} of pixels")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, help="registry JSON (default: the bundled one)")
    parser.add_argument("--model", help="model id in the registry (default: its default model)")
    parser.add_argument("--onnx", type=Path, help="time this ONNX file instead of a registry model")
    parser.add_argument("--img-size", type=int, default=224, help="input size of --onnx (default 224)")
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kdseg_bench_") as tmp:
        tmp_dir = Path(tmp)
        registry = registry_for_onnx(args.onnx, args.img_size, tmp_dir) if args.onnx else args.registry
        try:
            card = load_registry(registry).get(args.model)
        except KDSegError as exc:
            print(f"No model to benchmark: {exc}\nPass --onnx FILE (e.g. an export from `kdseg-train export`) "
                  "or --registry/--model.")
            return 1
        ct = resampled_ct(512, args.slices)
        source = tmp_dir / "ct.nii.gz"
        sitk.WriteImage(ct, str(source), useCompression=True)
        print(f"input: {ct.GetSize()} int16 ({ct.GetNumberOfPixels() * 2 / 1e6:.0f} MB in memory, "
              f"{source.stat().st_size / 1e6:.0f} MB .nii.gz), resampled from {DATA.name}")
        print(f"model: {card.id} v{card.version} ({card.input.height}x{card.input.width}, "
              f"{card.num_classes} classes), batch {args.batch_size}, threads {args.threads or 'default'}, "
              f"CPU {os.cpu_count()} cores")
        del ct
        volumes_json = tmp_dir / "volumes.json"
        command = [sys.executable, "-m", "KDSegmentationLib.cli"]
        if registry is not None:
            command += ["--registry", str(registry)]
        command += ["segment", str(source), "-o", str(tmp_dir / "seg.nii.gz"), "--device", "cpu",
                    "--batch-size", str(args.batch_size), "--volumes-json", str(volumes_json), "--no-progress"]
        if args.model:
            command += ["--model", args.model]
        if args.threads:
            command += ["--threads", str(args.threads)]
        start = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if run.returncode != 0:
            print(f"kdseg failed (exit {run.returncode}): {run.stderr.strip()}")
            return 1
        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        child_peak_mb = child_peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux
        timings = json.loads(volumes_json.read_text(encoding="utf-8"))["timings_s"]

    print("stage times (s):")
    for stage, seconds in timings.items():
        print(f"  {stage:<12} {seconds:7.2f}")
    total = sum(timings.values())
    print(f"  {'sum':<12} {total:7.2f}   (process wall time incl. Python start-up {wall:.2f} s)")
    print(f"throughput: {args.slices / total:.1f} slices/s end to end, "
          f"{args.slices / timings['infer']:.1f} slices/s in ONNX Runtime")
    print(f"peak RSS of the kdseg process: {child_peak_mb:.0f} MB "
          f"(target for 512x512x300: < 3072 MB)")
    class_maps_back_side_by_side(card.num_classes, card.input.height, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
