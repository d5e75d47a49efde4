"""Arguments and error reporting shared by the config-driven subcommands."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path
from typing import Callable

from ..errors import BUG_REPORT_HINT, EXIT_BUG, EXIT_USAGE, UsageError

__all__ = ["add_config_arguments", "report_errors"]

_log = logging.getLogger("kdseg_train")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The YAML config positional and ``--set key=value ...`` overrides."""
    parser.add_argument("config", type=Path, help="YAML run configuration (see Training/configs/)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=None, metavar="KEY=VALUE", action="extend",
                        help="override config values, e.g. --set optim.lr=0.005 data.batch_size=4")


def report_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print the project's own usage errors on one line (exit 2); anything else is a bug (traceback, exit 1).

    Usage errors are :class:`~kdseg_train.errors.UsageError` (config values and keys,
    arguments, input files), a missing or already existing file or run folder, an unusable
    checkpoint, and the Lib's :class:`~KDSegmentationLib.errors.KDSegError` (its own exit code).
    """

    def wrapped(args: argparse.Namespace) -> int:
        from KDSegmentationLib.errors import KDSegError

        from ..checkpoint import CheckpointError

        try:
            return run(args)
        except KDSegError as exc:
            _report_usage(args, exc)
            return exc.exit_code
        except (UsageError, FileNotFoundError, FileExistsError, CheckpointError) as exc:
            _report_usage(args, exc)
            return EXIT_USAGE
        except Exception:  # noqa: BLE001 - the one place that turns a crash into a bug report
            traceback.print_exc()
            print(f"error: {BUG_REPORT_HINT}", file=sys.stderr)
            return EXIT_BUG

    wrapped.__name__ = run.__name__
    wrapped.__doc__ = run.__doc__
    return wrapped


def _report_usage(args: argparse.Namespace, exc: BaseException) -> None:
    if getattr(args, "verbose", False):
        _log.exception("failed")
    print(f"error: {exc}", file=sys.stderr)
