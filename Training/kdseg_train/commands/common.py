"""Arguments and error reporting shared by the config-driven subcommands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

__all__ = ["add_config_arguments", "report_errors"]

_log = logging.getLogger("kdseg_train")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The YAML config positional and ``--set key=value ...`` overrides."""
    parser.add_argument("config", type=Path, help="YAML run configuration (see Training/configs/)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=None, metavar="KEY=VALUE", action="extend",
                        help="override config values, e.g. --set optim.lr=0.005 data.batch_size=4")


def report_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn expected failures (bad config, missing files, bad checkpoints) into one line and exit code 2."""

    def wrapped(args: argparse.Namespace) -> int:
        from ..checkpoint import CheckpointError
        from ..config import ConfigError

        try:
            return run(args)
        except (ConfigError, FileNotFoundError, FileExistsError, CheckpointError, ValueError) as exc:
            if getattr(args, "verbose", False):
                _log.exception("failed")
            print(f"error: {exc}", file=sys.stderr)
            return 2

    wrapped.__name__ = run.__name__
    wrapped.__doc__ = run.__doc__
    return wrapped
