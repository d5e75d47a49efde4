"""Plausible adult organ volumes, to check a segmentation's result (self-test, sanity warnings).

The ranges are deliberately wide: they accept small, atrophic, enlarged or partly
imaged organs and still catch the failures that matter (an organ missing, a label
flooding the body, millilitres confused with mm^3). The aorta's range reflects the
segment inside an abdominal field of view, not the whole vessel.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Tuple

__all__ = ["PLAUSIBLE_VOLUME_ML", "implausible_volumes"]

PLAUSIBLE_VOLUME_ML: Dict[str, Tuple[float, float]] = {
    "aorta": (10.0, 600.0),
    "gallbladder": (2.0, 300.0),
    "kidney_left": (30.0, 450.0),
    "kidney_right": (30.0, 450.0),
    "liver": (500.0, 4500.0),
    "pancreas": (5.0, 300.0),
    "spleen": (30.0, 1500.0),
    "stomach": (20.0, 3000.0),
}


def implausible_volumes(volumes_ml: Mapping[str, float], expected: Iterable[str]) -> List[str]:
    """One message per expected structure that is missing or outside its plausible range.

    Args:
        volumes_ml: structure name -> volume in mL.
        expected: structure names that must be present.

    Raises:
        KeyError: an expected structure has no known range.
    """
    problems = []
    for name in expected:
        low, high = PLAUSIBLE_VOLUME_ML[name]
        volume = volumes_ml.get(name)
        if volume is None or volume == 0:
            problems.append(f"{name}: not segmented")
        elif not low <= volume <= high:
            problems.append(f"{name}: {volume:.1f} mL is outside the plausible {low:g}-{high:g} mL")
    return problems
