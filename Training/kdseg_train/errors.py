"""The one exception type for problems a user fixes: config values, command-line arguments, input files.

``kdseg-train`` prints a :class:`UsageError` as one ``error: ...`` line and exits with
code 2. Any other exception escaping a command is a bug in kdseg-train: the command
prints the traceback and asks for a report (exit code 1). So code raises
``UsageError`` where the message tells a user what to change, and a plain ``ValueError``
(or ``TypeError``, ...) where a caller inside the package broke a contract (a tensor of the
wrong shape reaching a loss).
"""

from __future__ import annotations

__all__ = ["UsageError", "EXIT_USAGE", "EXIT_BUG", "BUG_REPORT_HINT"]

EXIT_USAGE = 2
EXIT_BUG = 1
BUG_REPORT_HINT = ("this is a bug in kdseg-train, not a problem with your config or data; please report it with "
                   "the traceback above, the command line and the run's config.yaml")


class UsageError(ValueError):
    """A config value, argument or input file is wrong; the message names it and how to fix it.

    A ``ValueError`` so that callers (and tests) that catch ``ValueError`` keep working.
    """
