"""Keep ITK, GDCM and NIfTI-library console output away from the user.

Those C/C++ libraries print straight to the process's standard error (file
descriptor 2): ITK warnings with source-file paths, GDCM notes, the NIfTI library's
"** ERROR: NWAD: wrote only ..." on a full disk. Every case they warn about is
checked by the Lib itself and reported in one plain line, so their text is caught
here and only logged at info level (``kdseg -v`` shows it).

ITK's own warning switch is turned off for the span, which silences ITK and GDCM
while reading. Writing also redirects the descriptor (the NIfTI library prints with
``fprintf``), but only where Python's ``sys.stderr`` is that descriptor (the command
line, not 3D Slicer), and not while reading: ``kdseg`` loads the model on another
thread meanwhile, whose download progress and warnings must stay visible.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Iterator, List

import SimpleITK as sitk

__all__ = ["native_messages_captured"]

_log = logging.getLogger("KDSegmentationLib")
_lock = threading.RLock()  # the descriptor and ITK's switch are process-wide


def _stderr_is_descriptor_2() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def native_messages_captured(what: str, descriptor: bool = False) -> Iterator[List[str]]:
    """Silence ITK warnings (and with ``descriptor``, catch descriptor-2 output) for the duration.

    Args:
        what: what is being done, for the log (e.g. "writing seg.nii").
        descriptor: also redirect file descriptor 2 (writers that print with fprintf).

    Yields:
        A list that receives the caught lines when the block ends.
    """
    caught: List[str] = []
    with _lock:
        previous = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        redirect = descriptor and _stderr_is_descriptor_2()
        saved = sink = None
        if redirect:
            try:
                sys.stderr.flush()
                sink = tempfile.TemporaryFile()
                saved = os.dup(2)
                os.dup2(sink.fileno(), 2)
            except OSError:  # no descriptor to spare: leave stderr as it is
                if sink is not None:
                    sink.close()
                saved = sink = None
        try:
            yield caught
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(previous)
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                text = sink.read().decode("utf-8", "replace")
                sink.close()
                caught.extend(line for line in text.splitlines() if line.strip())
                for line in caught:
                    _log.info("ITK said while %s: %s", what, line)
