"""``kdseg-train train`` and ``kdseg-train distill``: one YAML config, ``--set`` overrides, ``--resume``."""

from __future__ import annotations

import argparse
import sys

from .common import add_config_arguments, report_errors

__all__ = ["register"]


@report_errors
def _run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..trainer import Trainer, TrainingInterrupted

    config = load_config(args.config, args.overrides or [])
    trainer = Trainer(config, distill=args.command == "distill")
    try:
        final = trainer.run(resume=args.resume)
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    if trainer.ctx.is_main:
        print(f"finished: weights in {final}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, help_text in (
            ("train", "train a model (the teacher, or any config) with the segmentation loss"),
            ("distill", "train a student from a frozen teacher with the configured distillation terms")):
        parser = subparsers.add_parser(name, help=help_text, description=help_text + ". Runs under torchrun for "
                                       "DistributedDataParallel; writes config.yaml, logs, checkpoints, final/.")
        add_config_arguments(parser)
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in the config's output folder from its latest checkpoint")
        parser.set_defaults(handler=_run)
