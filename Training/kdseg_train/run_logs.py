"""CSV and TensorBoard logs of a run that stay consistent across kill-and-resume.

Rows (and TensorBoard events) written after the checkpoint a run resumes from are
dropped on resume, so the logs of a resumed run read like those of an uninterrupted one.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from KDSegmentationLib.atomic_files import atomic_file
from .errors import UsageError

__all__ = ["CsvLog", "read_csv", "open_tensorboard"]

_log = logging.getLogger("kdseg_train")


class CsvLog:
    """Append-only CSV with a fixed header and a ``step`` first column.

    Args:
        path: the CSV file.
        columns: header; the first column must be ``step``.
        resume_step: when not None, rows with ``step`` greater than it are removed first.
    """

    def __init__(self, path: Path, columns: Sequence[str], resume_step: Optional[int] = None) -> None:
        if columns[0] != "step":
            raise UsageError("the first CSV column must be 'step'")
        self.path = Path(path)
        self.columns = list(columns)
        if self.path.is_file() and resume_step is not None:
            self._truncate_after(resume_step)
        elif self.path.is_file() and resume_step is None:
            self.path.unlink()  # a fresh run never appends to a stale log
        new = not self.path.is_file()
        self._handle = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._handle)
        if new:
            self._writer.writerow(self.columns)
            self._handle.flush()

    def _truncate_after(self, step: int) -> None:
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if rows and rows[0] != self.columns:
            raise UsageError(f"{self.path} has columns {rows[0]}, this run writes {self.columns}; the config changed "
                             "between the run and its resume (terms, validation cases), so resume is refused")
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step] if rows else [self.columns]
        with atomic_file(self.path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(kept)

    def write(self, row: Dict[str, Any]) -> None:
        self._writer.writerow([_format(row.get(c, "")) for c in self.columns])

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def open_tensorboard(directory: Path, resume_step: Optional[int]):
    """A SummaryWriter that discards events after ``resume_step``; None when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        _log.warning("tensorboard is not installed (pip install tensorboard); logging to CSV only")
        return None
    return SummaryWriter(str(directory), purge_step=None if resume_step is None else resume_step + 1)
