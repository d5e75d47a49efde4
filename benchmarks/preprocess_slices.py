"""The pipeline's preprocessing stage alone (HU window + slices onto the model grid), this tree against another.

    python benchmarks/preprocess_slices.py [--ct FILE] [--registry REG] [--model ID] [--slices 150]
                                           [--batch-size 8] [--rounds 5] [--baseline-src DIR]

Each tree runs in its own process (``--baseline-src``: a checkout, e.g. a ``git worktree`` of
main), the two interleaved for ``--rounds`` rounds on the same CT (default: the real example
CT resampled to 512 x 512 x N int16 HU, as ``segment_volume.py`` builds it; ``--ct``: any CT
file). Each process segments the CT's canonical slices in batches through the tree's own
``classify_slices`` (the function ``kdseg segment`` runs per batch) with a stand-in engine that
returns zero scores at once, and prints the pipeline's own "preprocess" time: the window and
the resampling onto the card's grid, nothing else. It also prints the process's CPU time over
the wall time of that loop (1.0: one thread; more: BLAS threads woke up, which would then spin
next to ONNX Runtime's) and the model input's difference to training's ``to_model``.
Prints figures (best and median of the rounds); asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk


class ZeroScores:
    """Stands in for ONNX Runtime: zero scores of the card's shape, so that only the pipeline's own work is timed."""

    device = "cpu"

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.inputs: List[np.ndarray] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.inputs.append(batch)
        return np.zeros((batch.shape[0], self.num_classes) + batch.shape[2:], np.float32)


def worker(ct: Path, registry: Optional[Path], model: Optional[str], slices: int, batch_size: int) -> Dict:
    """One tree's figures (runs in the child process, with that tree on the path)."""
    from KDSegmentationLib.imaging.image_files import read_image
    from KDSegmentationLib.imaging.orientation import CanonicalAxes
    from KDSegmentationLib.inference.model_grid import ModelGrid
    from KDSegmentationLib.inference.pipeline import Segmenter, classify_slices
    from KDSegmentationLib.inference.preprocessing import window_to_unit
    from KDSegmentationLib.weights.model_registry import load_registry

    card = load_registry(registry).get(model)  # None: the bundled registry's default model
    image = read_image(ct)
    axes = CanonicalAxes(image)
    hu = axes.view(sitk.GetArrayViewFromImage(image))[:slices]  # as segment_image sees the voxels
    spacing_yx = (axes.spacing[1], axes.spacing[0])
    engine = ZeroScores(card.num_classes)
    segmenter = Segmenter(card, engine)
    labels = np.zeros(hu.shape, np.uint8)
    for first in range(0, min(2 * batch_size, len(hu)), batch_size):  # warm-up: operators built and cached
        classify_slices(hu[first:first + batch_size], segmenter, out=labels[first:first + batch_size],
                        spacing_yx=spacing_yx)
    engine.inputs.clear()
    timings = {"preprocess": 0.0}
    wall, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(hu), batch_size):
        classify_slices(hu[first:first + batch_size], segmenter, out=labels[first:first + batch_size],
                        timings=timings, spacing_yx=spacing_yx)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures = {"preprocess_s": timings["preprocess"], "cpu_over_wall": cpu / wall, "slices": int(len(hu)),
               "model": card.id, "grid": [card.input.height, card.input.width, card.input.pixel_spacing_mm]}
    if card.input.pixel_spacing_mm is not None:
        grid = ModelGrid(card.input.height, card.input.width, card.input.pixel_spacing_mm)
        difference = 0.0
        for index, first in enumerate(range(0, len(hu), batch_size)):
            if index % 4 == 0:  # a sample of the batches: to_model is slow
                reference = grid.to_model(window_to_unit(np.array(hu[first:first + batch_size]), card.input.hu_window),
                                          spacing_yx)
                difference = max(difference, float(np.abs(engine.inputs[index][:, 0] - reference).max()))
        figures["max_abs_difference_to_to_model"] = difference
    return figures


def run_tree(tree: Path, args: argparse.Namespace) -> Dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "KDSegmentation"), str(tree / "Training")]))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--ct", str(args.ct), "--slices",
               str(args.slices), "--batch-size", str(args.batch_size)]
    if args.registry:
        command += ["--registry", str(args.registry)]
    if args.model:
        command += ["--model", args.model]
    result = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, help="CT file (default: the example CT resampled to 512 x 512 x N)")
    parser.add_argument("--registry", type=Path)
    parser.add_argument("--model")
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-src", type=Path, help="also time this source tree, interleaved")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.ct, args.registry, args.model, args.slices, args.batch_size)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.ct is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from segment_volume import resampled_ct

            args.ct = Path(tmp) / "ct512.nii.gz"
            sitk.WriteImage(resampled_ct(512, args.slices), str(args.ct))
        trees = {"this tree": Path(__file__).resolve().parents[1]}
        if args.baseline_src:
            trees = {"baseline": args.baseline_src.resolve(), **trees}
        runs: Dict[str, List[Dict]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(run_tree(tree, args))
    print(f"CT {args.ct.name if args.ct else ''}: {runs['this tree'][0]['slices']} slices, model "
          f"{runs['this tree'][0]['model']} (grid {runs['this tree'][0]['grid']}), batches of {args.batch_size}, "
          f"{args.rounds} interleaved rounds; load average (1 min) {os.getloadavg()[0]:.2f}")
    best = {}
    for name, tree in trees.items():
        seconds = [run["preprocess_s"] for run in runs[name]]
        best[name] = min(seconds)
        ratio = statistics.median(run["cpu_over_wall"] for run in runs[name])
        difference = runs[name][0].get("max_abs_difference_to_to_model")
        print(f"{name:10s} ({tree}): preprocess best {min(seconds) * 1000:.1f} ms, median "
              f"{statistics.median(seconds) * 1000:.1f} ms ({min(seconds) / runs[name][0]['slices'] * 1e6:.0f} us/slice); "
              f"CPU/wall of the loop {ratio:.2f}"
              + ("" if difference is None else f"; model input vs training's to_model: max |diff| {difference:.1e}"))
    if "baseline" in best:
        print(f"baseline / this tree (best of rounds): {best['baseline'] / best['this tree']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
