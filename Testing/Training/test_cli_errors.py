"""kdseg-train: the project's own usage errors are one line and exit 2; anything else is a reported bug (exit 1)."""

import argparse

import pytest

from kdseg_train.commands.common import report_errors
from kdseg_train.config import ConfigError
from kdseg_train.errors import EXIT_BUG, EXIT_USAGE, UsageError


def _failing(exc):
    @report_errors
    def run(args):
        raise exc

    return run


@pytest.mark.parametrize("exc", [UsageError("data.batch_size must be >= 1, got 0"),
                                 ConfigError("unknown config key 'train.max_stepz'"),
                                 FileNotFoundError("config file x.yaml does not exist")])
def test_usage_errors_print_one_line_and_exit_2(exc, capsys):
    assert _failing(exc)(argparse.Namespace()) == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err == f"error: {exc}\n"


@pytest.mark.parametrize("exc", [ValueError("expected logits (B, 9, ...), got (2, 3)"), KeyError("tokens"),
                                 ZeroDivisionError("division by zero")])
def test_other_exceptions_are_reported_as_bugs_with_the_traceback(exc, capsys):
    assert _failing(exc)(argparse.Namespace()) == EXIT_BUG == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and type(exc).__name__ in err
    assert err.rstrip().endswith("the command line and the run's config.yaml") and "bug in kdseg-train" in err


def test_an_unknown_config_key_names_its_path_through_the_cli(tmp_path, capsys):
    from kdseg_train.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("train:\n  max_stepz: 5\n", encoding="utf-8")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'train.max_stepz'") and "Traceback" not in err
