"""Training data: CT volumes in the Lib's canonical orientation, label remaps, slice datasets."""

from .ct_volumes import CTVolume, load_ct_volume
from .label_maps import IGNORE_INDEX, REMAP_TABLES, remap_labels
from .slices import AxialSliceDataset, augment_slice, resize_pair

__all__ = ["CTVolume", "load_ct_volume", "IGNORE_INDEX", "REMAP_TABLES", "remap_labels",
           "AxialSliceDataset", "augment_slice", "resize_pair"]
