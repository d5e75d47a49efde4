"""Label remap tables from source datasets to the Synapse 8-organ order of KDSegmentation."""

from __future__ import annotations

from typing import Dict, Iterable, Mapping

import numpy as np

__all__ = ["IGNORE_INDEX", "BTCV_TO_SYNAPSE", "TOTALSEGMENTATOR_TO_SYNAPSE", "DCMQI_TO_SYNAPSE",
           "REMAP_TABLES", "remap_labels"]

IGNORE_INDEX = 255
"""Target value for voxels whose class is unknown (an organ the dataset does not annotate)."""

# Synapse order: 1 aorta, 2 gallbladder, 3 kidney_left, 4 kidney_right, 5 liver, 6 pancreas, 7 spleen, 8 stomach
BTCV_TO_SYNAPSE: Dict[int, int] = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
TOTALSEGMENTATOR_TO_SYNAPSE: Dict[int, int] = {52: 1, 4: 2, 3: 3, 2: 4, 5: 5, 7: 6, 1: 7, 6: 8}
# dcmqi test data: 1 liver, 2 spine (manual). Only the liver is annotated among our organs.
DCMQI_TO_SYNAPSE: Dict[int, int] = {1: 5}

REMAP_TABLES: Dict[str, Mapping[int, int]] = {
    "identity": {i: i for i in range(1, 9)},
    "btcv": BTCV_TO_SYNAPSE,
    "totalsegmentator": TOTALSEGMENTATOR_TO_SYNAPSE,
    "dcmqi": DCMQI_TO_SYNAPSE,
}


def remap_labels(labels: np.ndarray, table: Mapping[int, int], unlabeled: Iterable[int] = (),
                 ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Map source label values to target values; everything not in ``table`` becomes background.

    Args:
        labels: integer label array of the source dataset.
        table: source value -> target value.
        unlabeled: target organs the dataset does not annotate. When given, source
            background (0) becomes ``ignore_index``, because such a voxel may belong to
            one of them; voxels the source annotated as other anatomy stay background.
        ignore_index: value for unknown voxels.

    Returns:
        uint8 array of target labels.
    """
    source = np.asarray(labels).astype(np.int64, copy=False)
    if source.size and (source.min() < 0):
        raise ValueError("label maps must be non-negative")
    lut = np.zeros(max(int(source.max(initial=0)), max(table, default=0)) + 1, dtype=np.uint8)
    for src, dst in table.items():
        lut[src] = dst
    out = lut[source]
    if list(unlabeled):
        # A voxel with no source label might be an organ the source never annotates.
        out[source == 0] = ignore_index
    return out
