"""Label remap tables from source datasets to the Synapse 8-organ order of KDSegmentation.

Target order (``KDSegmentationLib.anatomy.SYNAPSE_ORGANS``): 0 background, 1 aorta,
2 gallbladder, 3 kidney_left, 4 kidney_right, 5 liver, 6 pancreas, 7 spleen, 8 stomach.

A dataset that does not annotate some of these organs cannot say that an unlabelled
voxel is background: it may be one of the organs it never draws. Such voxels get
:data:`IGNORE_INDEX`, which the segmentation loss and the metrics leave out.
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Union

import numpy as np
from ..errors import UsageError

__all__ = ["IGNORE_INDEX", "SYNAPSE_NUM_CLASSES", "BTCV_TO_SYNAPSE", "TOTALSEGMENTATOR_TO_SYNAPSE",
           "DCMQI_TO_SYNAPSE", "IDENTITY_SYNAPSE", "REMAP_TABLES", "resolve_remap", "remap_labels"]

IGNORE_INDEX = 255
"""Target value for voxels whose class is unknown (an organ the dataset does not annotate)."""

SYNAPSE_NUM_CLASSES = 9
"""Background plus the eight Synapse organs."""

# BTCV (13 organs): 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver,
# 7 stomach, 8 aorta, 9 IVC, 10 portal/splenic vein, 11 pancreas, 12/13 adrenal glands.
BTCV_TO_SYNAPSE: Dict[int, int] = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
# TotalSegmentator "total" task ids (v2): 1 spleen, 2 kidney_right, 3 kidney_left,
# 4 gallbladder, 5 liver, 6 stomach, 7 pancreas, 52 aorta.
TOTALSEGMENTATOR_TO_SYNAPSE: Dict[int, int] = {52: 1, 4: 2, 3: 3, 2: 4, 5: 5, 7: 6, 1: 7, 6: 8}
# dcmqi test data: 1 liver, 2 spine (manual). Only the liver is annotated among our organs.
DCMQI_TO_SYNAPSE: Dict[int, int] = {1: 5}
IDENTITY_SYNAPSE: Dict[int, int] = {i: i for i in range(1, SYNAPSE_NUM_CLASSES)}

REMAP_TABLES: Dict[str, Mapping[int, int]] = {
    "identity": IDENTITY_SYNAPSE,
    "synapse": IDENTITY_SYNAPSE,
    "btcv": BTCV_TO_SYNAPSE,
    "totalsegmentator": TOTALSEGMENTATOR_TO_SYNAPSE,
    "dcmqi": DCMQI_TO_SYNAPSE,
}


def resolve_remap(table: Union[str, Mapping[int, int], None]) -> Mapping[int, int]:
    """A remap table from its name in :data:`REMAP_TABLES`, a mapping (YAML keys may be strings), or None (identity).

    Raises:
        ValueError: unknown name, or a mapping whose keys/values are not non-negative integers.
    """
    if table is None:
        return IDENTITY_SYNAPSE
    if isinstance(table, str):
        if table not in REMAP_TABLES:
            raise UsageError(f"unknown label remap {table!r}; choose one of {', '.join(REMAP_TABLES)} "
                             "or give a mapping {source_id: synapse_id}")
        return REMAP_TABLES[table]
    try:
        out = {int(k): int(v) for k, v in dict(table).items()}
    except (TypeError, ValueError):
        raise UsageError(f"label remap {table!r} must map integer source ids to integer target ids") from None
    if any(k < 0 or v < 0 for k, v in out.items()):
        raise UsageError(f"label remap {table!r} has negative ids")
    return out


def remap_labels(array: np.ndarray, table: Union[str, Mapping[int, int]], ignore_index: int = IGNORE_INDEX,
                 unlabeled: Iterable[int] = ()) -> np.ndarray:
    """Map source label values to target values; source values not in ``table`` become background.

    Args:
        array: integer label array of the source dataset (float arrays must hold integers).
        table: source value -> target value, or a name of :data:`REMAP_TABLES`.
        ignore_index: value for voxels whose class is unknown.
        unlabeled: target labels the dataset does not annotate. When non-empty, source
            background (0) becomes ``ignore_index``, because such a voxel may belong to one
            of those organs; voxels the source annotated as other anatomy (a source id
            outside ``table``) stay background, since they are known not to be any organ.

    Returns:
        uint8 array of target labels, same shape.

    Raises:
        ValueError: negative or non-integer source labels, or a target label that collides
            with ``ignore_index``.
    """
    table = resolve_remap(table)
    unlabeled = tuple(int(u) for u in unlabeled)
    if ignore_index in table.values():
        raise UsageError(f"remap table maps a source id to the ignore value {ignore_index}")
    if not 0 <= ignore_index <= 255:
        raise UsageError(f"ignore_index must fit in uint8, got {ignore_index}")
    source = np.asarray(array)
    if source.dtype.kind == "f":
        if not np.all(np.isfinite(source)) or not np.array_equal(source, np.round(source)):
            raise UsageError("label map holds non-integer values; give a label map, not an image")
    source = source.astype(np.int64, copy=False)
    if source.size and source.min() < 0:
        raise UsageError(f"label maps must be non-negative (found {int(source.min())})")
    lut = np.zeros(max(int(source.max(initial=0)), max(table, default=0)) + 1, dtype=np.uint8)
    for src, dst in table.items():
        lut[src] = dst
    out = lut[source]
    if unlabeled:
        # A voxel with no source label might be an organ the source never annotates.
        out[source == 0] = ignore_index
    return out
