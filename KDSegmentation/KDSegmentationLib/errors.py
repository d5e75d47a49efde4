"""Exceptions raised by KDSegmentationLib, each with a user-facing fix and an exit code.

Every failure a user can cause (bad input, missing weights, no GPU, unwritable
output, ...) is raised as a subclass of :class:`KDSegError`. The message names the
problem; ``hint`` says how to fix it. The ``kdseg`` command prints both on one
line and exits with ``exit_code``; the Slicer module shows them in a dialog.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "EXIT_OK",
    "EXIT_UNEXPECTED",
    "EXIT_USAGE",
    "EXIT_INPUT",
    "EXIT_MODEL",
    "EXIT_WEIGHTS",
    "EXIT_DEVICE",
    "EXIT_OUTPUT",
    "EXIT_CANCELLED",
    "KDSegError",
    "InputImageError",
    "RegistryError",
    "ModelNotFoundError",
    "WeightsError",
    "DownloadError",
    "ChecksumError",
    "DeviceError",
    "OutputError",
    "WriteVerificationError",
    "CancelledError",
]

# Documented in README.md ("Exit codes"); keep both in sync.
EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_MODEL = 4
EXIT_WEIGHTS = 5
EXIT_DEVICE = 6
EXIT_OUTPUT = 7
EXIT_CANCELLED = 130


class KDSegError(Exception):
    """Base class: a problem the user can fix.

    Args:
        message: what went wrong, naming the file, model or value concerned.
        hint: how to fix it (one sentence), or None.
    """

    exit_code: int = EXIT_UNEXPECTED

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} {self.hint}"
        return self.message


class InputImageError(KDSegError):
    """The input image is missing, unreadable or not a 3D single-channel CT."""

    exit_code = EXIT_INPUT


class RegistryError(KDSegError):
    """The model registry file is missing or an entry is invalid."""

    exit_code = EXIT_MODEL


class ModelNotFoundError(RegistryError):
    """An unknown model id or structure name was requested."""


class WeightsError(KDSegError):
    """Model weights could not be found, downloaded or verified."""

    exit_code = EXIT_WEIGHTS


class DownloadError(WeightsError):
    """A download failed (network, HTTP status, timeout)."""


class ChecksumError(WeightsError):
    """A downloaded or cached file does not match the registry's size or sha256."""


class DeviceError(KDSegError):
    """The requested inference device cannot be used."""

    exit_code = EXIT_DEVICE


class OutputError(KDSegError):
    """The output file cannot be written."""

    exit_code = EXIT_OUTPUT


class WriteVerificationError(OutputError):
    """A file or folder failed its check after writing; the previous one was left unchanged."""


class CancelledError(KDSegError):
    """The user cancelled a running segmentation."""

    exit_code = EXIT_CANCELLED
