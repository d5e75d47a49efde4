"""Readers of public abdominal CT datasets as their owners distribute them, remapped to the 8 Synapse organs.

=====================  ==============================================  =====================
layout                 folder as downloaded                            organs labelled
=====================  ==============================================  =====================
``totalsegmentator``   ``meta.csv``, ``sNNNN/ct.nii.gz``,              all 8
                       ``sNNNN/segmentations/<structure>.nii.gz``
``amos``               ``dataset.json``, ``imagesTr/``, ``labelsTr/``  all 8 (CT cases only)
``btcv``               ``img/imgNNNN.nii.gz``, ``label/labelNNNN...``  all 8
``msd``                ``TaskNN_*/dataset.json``, ``imagesTr/`` ...    the task's organ
``kits``               ``case_NNNNN/imaging.nii.gz`` +                 both kidneys (split
                       ``segmentation.nii.gz``                         at the midline)
=====================  ==============================================  =====================

:func:`kdseg_train.data.layout_convert.convert_layout` writes their labels and a datalist.
"""

from __future__ import annotations

from typing import Dict

from ...errors import UsageError
from .amos import AMOSLayout
from .base import ALL_ORGANS, SPLITS, DatasetLayout, LayoutCase
from .btcv import BTCVLayout
from .kits import KiTSLayout
from .msd import MSDLayout
from .totalsegmentator import TotalSegmentatorLayout

__all__ = ["LAYOUTS", "get_layout", "DatasetLayout", "LayoutCase", "ALL_ORGANS", "SPLITS"]

LAYOUTS: Dict[str, DatasetLayout] = {layout.name: layout for layout in (
    TotalSegmentatorLayout(), AMOSLayout(), BTCVLayout(), MSDLayout(), KiTSLayout())}


def get_layout(name: str) -> DatasetLayout:
    """The reader of layout ``name``.

    Raises:
        ValueError: unknown name (the known ones are listed).
    """
    try:
        return LAYOUTS[name]
    except KeyError:
        raise UsageError(f"unknown dataset layout {name!r}; known: {', '.join(LAYOUTS)}") from None
