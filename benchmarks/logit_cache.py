"""Distillation steps per second with the teacher-logit cache vs a teacher forward pass per step, in one run.

    python benchmarks/logit_cache.py [--config Training/configs/student_distill_v2.yaml]
                                     [--teacher RUN_DIR] [--steps 10] [--rounds 3] [--threads 2]

Builds the config's distillation twice with the real training code (``kdseg_train.trainer.Trainer``):
``distill.logit_cache: auto`` (the teacher runs once per training slice, then every step reads
its logits moved with the augmentation) and ``distill.logit_cache: false`` (the teacher runs on
every augmented batch). Blocks of ``--steps`` optimiser steps of the two alternate for
``--rounds`` rounds, so load from other processes hits both alike; the cache's one-off build
is timed separately. Without ``--teacher`` an untrained teacher of the config's size is used
(speed does not depend on the weights). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdseg_train.config import load_config
from kdseg_train.export import export_safetensors
from kdseg_train.models import create_model
from kdseg_train.trainer import Trainer


def _trainer(config_path: Path, teacher: Path, cache: str, out: Path, threads: int) -> Trainer:
    config = load_config(config_path, [f"distill.teacher={teacher}", f"distill.logit_cache={cache}",
                                       f"output={out}", f"train.threads={threads}", "data.val=[]"])
    return Trainer(config, distill=True)


def _timed_steps(trainer: Trainer, batches, engine, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        trainer._step(engine, *next(batches))
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("Training/configs/student_distill_v2.yaml"))
    parser.add_argument("--teacher", type=Path, default=None, help="teacher run folder (default: untrained)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="kdseg-bench-cache-") as tmp:
        tmp_path = Path(tmp)
        teacher = args.teacher
        if teacher is None:
            size = int(load_config(args.config)["model"]["img_size"])
            teacher = tmp_path / "teacher"
            export_safetensors(create_model("teacher-r50-b16", img_size=size), teacher / "final", {"steps": 0})
        cache = tmp_path / "logit_cache"  # a fresh cache folder: the first set-up builds it, the second reuses it
        start = time.perf_counter()
        cached = _trainer(args.config, teacher, str(cache), tmp_path / "cached", args.threads)
        build_s = time.perf_counter() - start
        assert cached.cached_logits, "the config's distillation terms cannot use the cache"
        start = time.perf_counter()
        cached_again = _trainer(args.config, teacher, str(cache), tmp_path / "cached2", args.threads)
        reuse_s = time.perf_counter() - start
        del cached_again
        forward = _trainer(args.config, teacher, "false", tmp_path / "forward", args.threads)
        runs = {"cached logits": cached, "teacher forward": forward}
        iterators = {name: iter(t._loader(0)) for name, t in runs.items()}
        engines = {name: t.engine() for name, t in runs.items()}
        for name, t in runs.items():  # warm-up
            _timed_steps(t, iterators[name], engines[name], 1)
        rates = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, t in runs.items():
                rates[name].append(_timed_steps(t, iterators[name], engines[name], args.steps))
    print(f"config {args.config}, batch {cached.global_batch}, {args.threads} threads, "
          f"{len(cached.dataset)} training slices")
    print(f"trainer set-up with building the cache (teacher once per slice): {build_s:.1f} s; "
          f"with reusing it: {reuse_s:.1f} s")
    for name, values in rates.items():
        print(f"  {name:<16} {statistics.median(values):6.3f} steps/s (median of {args.rounds} blocks of "
              f"{args.steps}: {', '.join(f'{v:.3f}' for v in values)})")
    gain = statistics.median(rates["cached logits"]) / statistics.median(rates["teacher forward"])
    print(f"steps/s gain of the logit cache (same run): {gain:.2f}x")


if __name__ == "__main__":
    main()
