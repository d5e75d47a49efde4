"""How long a download waits for data: the default and the accepted range of the read timeout.

One place for ``kdseg --timeout``, the Slicer module's setting (checked by
:mod:`KDSegmentationLib.slicer_support.run_settings`) and
:func:`KDSegmentationLib.weights.download.download_file`; importing it costs nothing
(no network modules), so ``kdseg`` can check the option before anything else loads.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_READ_TIMEOUT_S", "MAX_READ_TIMEOUT_S", "checked_read_timeout"]

DEFAULT_READ_TIMEOUT_S = 30.0
# Beyond an hour a stalled connection is no longer "slow"; retrying is the better choice.
MAX_READ_TIMEOUT_S = 3600.0


def checked_read_timeout(seconds: float) -> float:
    """``seconds`` as a float, if it is a usable read timeout.

    Raises:
        ValueError: not a number, or outside 1 .. :data:`MAX_READ_TIMEOUT_S`.
    """
    value = float(seconds)
    if not math.isfinite(value) or not 1.0 <= value <= MAX_READ_TIMEOUT_S:
        raise ValueError(f"the download read timeout must be between 1 and {MAX_READ_TIMEOUT_S:.0f} seconds, "
                         f"got {seconds}")
    return value
