"""Live-preview latency: one axial slice of a 512 x 512 CT located, segmented and turned into an overlay array.

    python benchmarks/slice_preview.py [--registry REG] [--model ID] [--slices 150] [--threads N]
                                       [--pixel-spacing-mm MM] [--json FILE]

The CT is the real example CT resampled to 512 x 512 x N (as benchmarks/segment_volume.py
builds it). The model session is opened and the volume prepared once, then every slice
is previewed in scrolling order, as the Slicer module's worker does it: Red-view
SliceToRAS -> slice under view -> model input -> ONNX Runtime -> class map back to
512 x 512 -> structure subset = the (1, 512, 512) uint8 overlay array. One preview's
latency is that whole call (not the MRML update, which needs Slicer). Reported: p50 and
p95 over all slices (target: p95 <= 50 ms on a 2-core CPU), per-stage medians, and,
measured interleaved in the same run so that machine load cancels out, the ratio to
the full pipeline's cost per slice (batches of 8). The 1-minute load average is
printed and saved: absolute figures on a busy machine are inflated, the ratio is not, and
neither (much) is the process's CPU time per preview, also reported (with one inference
thread it approximates the latency on an idle machine).
``--pixel-spacing-mm`` times the physical-size input mode with the same graph behind a card
asking for that many mm per model pixel (the model's own card decides otherwise).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_volume import DATA, resampled_ct  # noqa: E402  (same CT as the end-to-end benchmark)

from KDSegmentationLib.errors import KDSegError  # noqa: E402
from KDSegmentationLib.imaging.orientation import to_canonical  # noqa: E402
from KDSegmentationLib.imaging.slicer_geometry import ijk_to_ras_from_image  # noqa: E402
from KDSegmentationLib.inference.pipeline import Segmenter, classify_slices  # noqa: E402
from KDSegmentationLib.slicer_support.live_preview import (  # noqa: E402
    LivePreview,
    PreviewInput,
    ViewRequest,
    registry_segmenter_factory,
)
from KDSegmentationLib.slicer_support.run_settings import gui_inference_threads, run_settings  # noqa: E402
from KDSegmentationLib.weights.model_registry import load_registry  # noqa: E402


def axial_view_through(ijk_to_ras: np.ndarray, z: int) -> np.ndarray:
    """Slicer's default axial Red-view SliceToRAS centred on slice z of a canonical (LPS) volume."""
    view = np.diag([-1.0, 1.0, 1.0, 1.0])
    view[:3, 3] = (ijk_to_ras @ np.array([255.5, 255.5, z, 1.0]))[:3]
    return view


def percentile_ms(seconds, q) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, help="registry JSON (default: the bundled one)")
    parser.add_argument("--model", default="", help="model id in the registry (default: its default model)")
    parser.add_argument("--slices", type=int, default=150, help="slices of the 512 x 512 CT, each previewed once")
    parser.add_argument("--threads", type=int, default=gui_inference_threads(),
                        help="inference threads (default: the module's, all cores but one)")
    parser.add_argument("--pixel-spacing-mm", type=float,
                        help="time the physical-size mode: the model's graph at this many mm per model pixel")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.slices < 100:
        parser.error("--slices must be at least 100 for a meaningful p95")

    try:
        registry = load_registry(args.registry)
        settings, card = run_settings(registry, args.model, device="cpu", threads=args.threads)
    except KDSegError as exc:
        print(f"No model to benchmark: {exc}")
        return 1
    ct = resampled_ct(512, args.slices)
    volume = PreviewInput("benchmark", sitk.GetArrayFromImage(ct), ijk_to_ras_from_image(ct))
    canonical = to_canonical(ct)  # the grid the pipeline segments; the views below are axial on it
    canonical_ijk_to_ras = ijk_to_ras_from_image(canonical)
    load_before = os.getloadavg()[0]
    print(f"input: {ct.GetSize()} int16 resampled from {DATA.name}; model {card.id} v{card.version} "
          f"({card.input.height}x{card.input.width}); CPU {os.cpu_count()} cores, threads {args.threads or 'all'}; "
          f"load average (1 min) {load_before:.2f}")

    open_segmenter = registry_segmenter_factory(registry)
    if args.pixel_spacing_mm:
        def open_segmenter(settings, _open=open_segmenter):  # noqa: E306  (same graph, physical-size card)
            segmenter = _open(settings)
            physical = replace(segmenter.card.input, pixel_spacing_mm=args.pixel_spacing_mm)
            return Segmenter(replace(segmenter.card, input=physical), segmenter.engine)
    mode = f"physical size, {args.pixel_spacing_mm} mm per model pixel" if args.pixel_spacing_mm else (
        f"physical size, {card.input.pixel_spacing_mm} mm per model pixel" if card.input.pixel_spacing_mm
        else "resize")
    print(f"input mode: {mode}")
    preview = LivePreview(open_segmenter)
    start = time.perf_counter()
    first = preview(ViewRequest(settings, volume, axial_view_through(canonical_ijk_to_ras, 0), np.eye(4)))
    print(f"first preview (opens the session, prepares the volume): {(time.perf_counter() - start) * 1000:.0f} ms; "
          f"of which preparing the volume {first.timings['prepare'] * 1000:.0f} ms")
    for z in range(1, 6):  # warm-up: ONNX Runtime allocates its buffers during the first runs
        preview(ViewRequest(settings, volume, axial_view_through(canonical_ijk_to_ras, z), np.eye(4)))

    hu = sitk.GetArrayViewFromImage(canonical)  # what the full pipeline batches, for the side-by-side cost
    segmenter = preview.segmenter  # the same warm session
    latencies, cpu_times, stages, per_slice_batched = [], [], {}, []
    for z in range(args.slices):
        request = ViewRequest(settings, volume, axial_view_through(canonical_ijk_to_ras, z), np.eye(4))
        start, cpu_start = time.perf_counter(), time.process_time()
        outcome = preview(request)
        latencies.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        assert outcome.view.index == z and outcome.preview.labels.shape == (1, 512, 512)
        for stage, seconds in outcome.timings.items():
            stages.setdefault(stage, []).append(seconds)
        if z % 8 == 0 and z + 8 <= args.slices:  # interleaved: the full pipeline's step on 8 slices
            start = time.perf_counter()
            classify_slices(hu[z:z + 8], segmenter, spacing_yx=(canonical.GetSpacing()[1], canonical.GetSpacing()[0]))
            per_slice_batched.append((time.perf_counter() - start) / 8)
    load_after = os.getloadavg()[0]

    figures = {
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
        "mean_ms": float(np.mean(latencies) * 1000.0),
        "cpu_p50_ms": percentile_ms(cpu_times, 50),
        "cpu_p95_ms": percentile_ms(cpu_times, 95),
        "slices": args.slices,
        "slice_size": [512, 512],
        "model": card.id,
        "input_mode": mode,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "stage_p50_ms": {stage: percentile_ms(values, 50) for stage, values in stages.items()},
        "full_pipeline_per_slice_p50_ms": percentile_ms(per_slice_batched, 50),
        "ratio_preview_to_full_pipeline_per_slice": percentile_ms(latencies, 50) / percentile_ms(per_slice_batched, 50),
        "load_average_1min": [load_before, load_after],
    }
    print(f"one preview over {args.slices} slices of 512x512: p50 {figures['p50_ms']:.1f} ms, "
          f"p95 {figures['p95_ms']:.1f} ms, mean {figures['mean_ms']:.1f} ms (target p95 <= 50 ms)")
    print(f"  CPU time of the process per preview (all its threads): p50 {figures['cpu_p50_ms']:.1f} ms, "
          f"p95 {figures['cpu_p95_ms']:.1f} ms; with --threads 1 this is close to the latency on an idle machine")
    print("  stage medians (ms): " + ", ".join(f"{stage} {ms:.2f}" for stage, ms in figures["stage_p50_ms"].items()))
    print(f"side by side: full pipeline {figures['full_pipeline_per_slice_p50_ms']:.1f} ms per slice in batches of 8; "
          f"a preview costs {figures['ratio_preview_to_full_pipeline_per_slice']:.2f}x that")
    print(f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}"
          + ("  (busy machine: absolute figures are inflated)" if max(load_before, load_after) > 1.0 else ""))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
