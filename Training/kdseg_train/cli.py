"""``kdseg-train``: a thin dispatcher over the subcommand modules in :mod:`kdseg_train.commands`.

Every subcommand lives in its own module, which exposes ``register(subparsers)``: it adds
its parser(s) and sets ``handler=<callable(args) -> int>`` as the parser default. Adding a
subcommand is adding a module and one entry to :data:`COMMAND_MODULES`; nothing else here
changes. Modules import torch and friends inside their handlers so that ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional, Tuple

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

# Order = order in ``kdseg-train --help``.
COMMAND_MODULES: Tuple[str, ...] = ("models", "train", "evaluate", "export", "quantise", "convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdseg-train",
        description="Train, distil, evaluate and export KDSegmentation TransUNet models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.commands.{name}").register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
