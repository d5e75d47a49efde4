"""End-to-end `segment_image` on a real CT resampled to 512 x 512 x 150: time per stage, slices/s, peak RSS.

    python benchmarks/segment_volume.py [--registry REG] [--model ID] [--onnx FILE --img-size N]
                                        [--batch-size 8] [--threads N] [--slices 150]

Uses the default registry model, or any ONNX file (e.g. an untrained export, to time the
plumbing). Peak RSS is the process maximum (ru_maxrss) measured after the run. Asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from KDSegmentationLib.pipeline import SegmentationOptions, Segmenter, segment_image
from KDSegmentationLib.registry import InputSpec, ModelCard, labels_from_anatomy, write_registry

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "totalsegmentator_example" / "example_ct.nii.gz"


def upsample(image: sitk.Image, size_xy: int, slices: int) -> sitk.Image:
    size = (size_xy, size_xy, slices)
    spacing = [image.GetSpacing()[i] * image.GetSize()[i] / size[i] for i in range(3)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), -1024, sitk.sitkInt16)


def registry_for(onnx: Path, img_size: int, directory: Path) -> Path:
    data = onnx.read_bytes()
    card = ModelCard("benchmark", "benchmark", "0", "benchmark model", "unknown", onnx.name, len(data),
                     hashlib.sha256(data).hexdigest(), (onnx.resolve().as_uri(),),
                     InputSpec(1, img_size, img_size, (-125.0, 275.0)), labels_from_anatomy(),
                     license="n/a", intended_use="benchmark only")
    (directory / onnx.name).write_bytes(data)
    return write_registry(directory / "registry.json", [card], "benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path)
    parser.add_argument("--model")
    parser.add_argument("--onnx", type=Path)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--slices", type=int, default=150)
    args = parser.parse_args()
    ct = upsample(sitk.ReadImage(str(DATA)), 512, args.slices)
    print(f"input: {ct.GetSize()} int16 ({ct.GetNumberOfPixels() * 2 / 1e6:.0f} MB), from {DATA.name}")
    with tempfile.TemporaryDirectory() as tmp:
        registry = registry_for(args.onnx, args.img_size, Path(tmp)) if args.onnx else args.registry
        segmenter = Segmenter.from_registry(args.model, device="cpu", threads=args.threads, registry=registry,
                                            allow_download=False)
        start = time.perf_counter()
        result = segment_image(ct, segmenter, SegmentationOptions(batch_size=args.batch_size))
        total = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak_kb / 1024 if sys.platform != "darwin" else peak_kb / 1024 / 1024
    print(f"model {segmenter.card.id} ({segmenter.card.input.height}x{segmenter.card.input.width}), "
          f"batch {args.batch_size}, device {result.device}")
    for stage, seconds in result.timings.items():
        print(f"  {stage:<12} {seconds:7.2f} s")
    print(f"  {'total':<12} {total:7.2f} s   ({args.slices / total:.1f} slices/s end to end, "
          f"{args.slices / result.timings['infer']:.1f} slices/s inference)")
    print(f"peak RSS: {peak_mb:.0f} MB (budget for 512x512x300: 3 GB)")


if __name__ == "__main__":
    main()
